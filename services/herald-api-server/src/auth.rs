//! Authentication and authorisation: the verified client certificate becomes a `Caller`, and
//! one table (`METHOD_ROLES`) says which role each RPC needs, checked before any handler runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use herald_config::Validate;
use herald_domain::{Identity, Role};
use serde::Deserialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
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

/// The caller `Authenticator` attached to `request`.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The caller and the message of `request`.
pub(crate) fn parts<T>(request: Request<T>) -> Result<(Caller, T), Status> {
    Ok((caller(&request)?, request.into_inner()))
}

/// What configuration grants one identity.
#[derive(Debug, Clone)]
struct Principal {
    roles: BTreeSet<Role>,
    quota_per_minute: Option<u64>,
}

/// Every RPC of Herald's own services and the role it needs: the one table authorization
/// reads. A method missing from it is refused, so a new RPC is callable only once it is here
/// (a test checks the table against the services' descriptors).
const METHOD_ROLES: [(&str, Role); 27] = [
    ("herald.submit.v1.SubmitService/Submit", Role::Submit),
    ("herald.submit.v1.SubmitService/SubmitBatch", Role::Submit),
    (
        "herald.submit.v1.SubmitService/GetNotification",
        Role::Submit,
    ),
    (
        "herald.template.v1.TemplateService/CreateTemplate",
        Role::Admin,
    ),
    (
        "herald.template.v1.TemplateService/GetTemplate",
        Role::Submit,
    ),
    (
        "herald.template.v1.TemplateService/ListTemplates",
        Role::Submit,
    ),
    (
        "herald.template.v1.TemplateService/UpdateTemplate",
        Role::Admin,
    ),
    (
        "herald.template.v1.TemplateService/ActivateVersion",
        Role::Admin,
    ),
    (
        "herald.template.v1.TemplateService/ListVersions",
        Role::Submit,
    ),
    (
        "herald.template.v1.TemplateService/GetVariantStats",
        Role::Submit,
    ),
    (
        "herald.template.v1.TemplateService/RenderPreview",
        Role::Submit,
    ),
    (
        "herald.preference.v1.PreferenceService/GetPreferences",
        Role::Submit,
    ),
    (
        "herald.preference.v1.PreferenceService/UpdatePreferences",
        Role::Submit,
    ),
    (
        "herald.preference.v1.PreferenceService/DeletePreferences",
        Role::Submit,
    ),
    ("herald.inbox.v1.InboxService/ListInbox", Role::Inbox),
    ("herald.inbox.v1.InboxService/GetUnreadCount", Role::Inbox),
    ("herald.inbox.v1.InboxService/MarkRead", Role::Inbox),
    ("herald.inbox.v1.InboxService/MarkAllRead", Role::Inbox),
    ("herald.inbox.v1.InboxService/Archive", Role::Inbox),
    ("herald.inbox.v1.InboxService/Subscribe", Role::Inbox),
    (
        "herald.tracking.v1.TrackingService/RecordEvent",
        Role::Track,
    ),
    ("herald.tracking.v1.TrackingService/ListEvents", Role::Track),
    ("herald.admin.v1.AdminService/GetQueueStats", Role::Admin),
    ("herald.admin.v1.AdminService/ListFailures", Role::Admin),
    ("herald.admin.v1.AdminService/GetFailure", Role::Admin),
    ("herald.admin.v1.AdminService/ReplayFailures", Role::Admin),
    ("herald.admin.v1.AdminService/DiscardFailures", Role::Admin),
];

/// The role the RPC at `path` (`/package.Service/Method`) needs, if it is in the table.
fn required_role(path: &str) -> Option<Role> {
    let path = path.strip_prefix('/')?;
    METHOD_ROLES
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, role)| *role)
}

/// Authenticates every call from the TLS peer certificate and authorizes it by
/// `METHOD_ROLES`, before the service sees it; the handlers read the `Caller` it attaches.
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

    /// `service`, reachable only through this authenticator.
    pub(crate) fn guard<S>(&self, service: S) -> Authorized<S> {
        Authorized {
            inner: service,
            authenticator: self.clone(),
        }
    }

    /// The caller of a request with these `extensions`, allowed to call `path`.
    fn authorize(&self, extensions: &http::Extensions, path: &str) -> Result<Caller, Status> {
        // The TLS handshake already refused clients without a certificate from our CA; this
        // only finds the identity in the verified leaf certificate.
        let certificates = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
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
        let caller = Caller {
            identity,
            roles,
            quota_per_minute,
        };
        let method = path.rsplit('/').next().unwrap_or(path);
        let role = required_role(path).ok_or_else(|| {
            Status::permission_denied(format!("{method} is not in the authorization table"))
        })?;
        caller.require(role, method)?;
        Ok(caller)
    }
}

/// A service behind an [`Authenticator`]: a call that is not authorized is answered with its
/// status and never reaches the service.
#[derive(Clone)]
pub(crate) struct Authorized<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self
            .authenticator
            .authorize(request.extensions(), request.uri().path())
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::{METHOD_ROLES, required_role};

    #[test]
    fn every_method_of_every_herald_service_is_in_the_table_and_nothing_else_is() {
        let descriptors =
            prost_types::FileDescriptorSet::decode(herald_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods: Vec<String> = descriptors
            .file
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    service.method.iter().map(move |method| {
                        format!("{}.{}/{}", file.package(), service.name(), method.name())
                    })
                })
            })
            .collect();
        methods.sort();
        let mut table: Vec<String> = METHOD_ROLES
            .iter()
            .map(|(method, _)| (*method).to_owned())
            .collect();
        table.sort();
        assert_eq!(table, methods);
        assert_eq!(
            required_role("/herald.admin.v1.AdminService/ReplayFailures"),
            Some(herald_domain::Role::Admin)
        );
        assert_eq!(required_role("/herald.admin.v1.AdminService/Nope"), None);
    }
}
