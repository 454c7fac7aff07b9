//! Authentication and authorisation: the verified client certificate becomes a `Caller`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use herald_config::Validate;
use herald_domain::{Identity, Role};
use serde::Deserialize;
use tonic::{Request, Status};

/// Which identities may call Herald, and with which roles.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// One entry per client identity.
    pub principals: Vec<PrincipalSettings>,
}

/// The roles of one client identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSettings {
    /// The client certificate's URI SAN (or DNS SAN), e.g. `spiffe://herald.local/service/orders`.
    pub identity: String,
    /// `submit`, `admin`, `inbox` and/or `track`.
    pub roles: Vec<String>,
    /// Overrides `submit.quota_per_minute` for this identity.
    #[serde(default)]
    pub quota_per_minute: Option<u64>,
}

impl Validate for AuthSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        for (index, principal) in self.principals.iter().enumerate() {
            if let Err(error) = Identity::parse(&principal.identity) {
                problems.push(format!("auth.principals[{index}].identity {error}"));
            }
            for role in &principal.roles {
                if let Err(error) = role.parse::<Role>() {
                    problems.push(format!("auth.principals[{index}].roles: {error}"));
                }
            }
        }
    }
}

/// The authenticated caller of a request, available to every handler.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The certificate's identity; recorded on what the caller creates.
    pub identity: Identity,
    roles: BTreeSet<Role>,
    /// This caller's own submit quota, if configured.
    pub(crate) quota_per_minute: Option<u64>,
}

impl Caller {
    /// Whether the caller holds `role` (admins hold every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&Role::Admin) || self.roles.contains(&role)
    }

    /// `PERMISSION_DENIED` unless the caller holds `role`.
    pub(crate) fn require(&self, role: Role, action: &str) -> Result<(), Status> {
        if self.has(role) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{action} needs the {role} role, which {} does not have",
                self.identity
            )))
        }
    }
}

/// The caller the interceptor attached to `request`.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// What configuration grants one identity.
#[derive(Debug, Clone)]
struct Principal {
    roles: BTreeSet<Role>,
    quota_per_minute: Option<u64>,
}

/// A tonic interceptor that authenticates every call from the TLS peer certificate.
#[derive(Clone)]
pub(crate) struct Authenticator {
    principals: Arc<HashMap<Identity, Principal>>,
}

impl Authenticator {
    pub(crate) fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let mut principals = HashMap::new();
        for principal in &settings.principals {
            let roles = principal
                .roles
                .iter()
                .map(|role| role.parse::<Role>())
                .collect::<Result<BTreeSet<_>, _>>()?;
            principals.insert(
                Identity::parse(&principal.identity)?,
                Principal {
                    roles,
                    quota_per_minute: principal.quota_per_minute,
                },
            );
        }
        Ok(Self {
            principals: Arc::new(principals),
        })
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // The TLS handshake already refused clients without a certificate from our CA; this
        // only finds the identity in the verified leaf certificate.
        let certificates = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let identity = certificates
            .first()
            .and_then(|leaf| herald_tls::identity_of(leaf.as_ref()))
            .ok_or_else(|| {
                Status::unauthenticated("the client certificate names no URI or DNS identity")
            })?;
        let Principal {
            roles,
            quota_per_minute,
        } = self.principals.get(&identity).cloned().ok_or_else(|| {
            Status::permission_denied(format!(
                "identity {identity} is not configured in auth.principals"
            ))
        })?;
        request.extensions_mut().insert(Caller {
            identity,
            roles,
            quota_per_minute,
        });
        Ok(request)
    }
}
