//! Authentication and authorisation: the verified client certificate becomes a `Caller`, and
//! one table (`METHOD_PERMISSIONS`) says which permission each RPC needs, checked before any
//! handler runs. A caller may also be bound to user namespaces (`namespaces`), which the
//! handlers check on every user id a request names.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use herald_config::Validate;
use herald_db::notifications::NotificationRecord;
use herald_domain::{Identity, Permission, Permission as P, Role};
use serde::Deserialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};

use namespaces::UserNamespaces;

mod namespaces;

/// Which identities may call Herald, and what each may do.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// One entry per client identity.
    pub principals: Vec<PrincipalSettings>,
}

/// What one client identity may do: permissions, given one by one or through roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSettings {
    /// The client certificate's URI SAN (or DNS SAN), e.g. `spiffe://herald.local/service/orders`.
    pub identity: String,
    /// `submit`, `admin`, `inbox` and/or `track`: each stands for a set of permissions
    /// (`Role::permissions`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permissions granted on their own, e.g. `contacts.read`, `contacts.write`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Overrides `submit.quota_per_minute` for this identity.
    #[serde(default)]
    pub quota_per_minute: Option<u64>,
    /// User-id prefixes such as `shop:`: when any are given, the identity sends to, reads,
    /// changes and erases only users whose id starts with one of them. None: every user.
    #[serde(default)]
    pub user_namespaces: Vec<String>,
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
            for permission in &principal.permissions {
                if let Err(error) = permission.parse::<Permission>() {
                    problems.push(format!("auth.principals[{index}].permissions: {error}"));
                }
            }
            for (position, prefix) in principal.user_namespaces.iter().enumerate() {
                if let Err(error) = namespaces::check_prefix(prefix) {
                    problems.push(format!(
                        "auth.principals[{index}].user_namespaces[{position}]: {error}"
                    ));
                }
            }
            if !principal.user_namespaces.is_empty() {
                let grants = principal.grants();
                for (permission, what) in [
                    (P::FailuresAdmin, "failures of all users"),
                    (P::TemplatesWrite, "templates every product's users receive"),
                ] {
                    if grants.contains(&permission) {
                        problems.push(format!(
                            "auth.principals[{index}]: {permission} spans every user namespace \
                             ({what}); a principal with user_namespaces cannot hold it"
                        ));
                    }
                }
            }
            if let Some(first) = self.principals[..index]
                .iter()
                .position(|earlier| earlier.identity == principal.identity)
            {
                problems.push(format!(
                    "auth.principals[{index}]: the identity is listed already (principals[{first}]); \
                     give each identity one entry"
                ));
            }
        }
    }
}

impl PrincipalSettings {
    /// Every permission granted, one by one or through roles; names that do not parse are
    /// left out (validation reports them).
    fn grants(&self) -> BTreeSet<Permission> {
        let roles = self
            .roles
            .iter()
            .filter_map(|role| role.parse::<Role>().ok())
            .flat_map(|role| role.permissions().iter().copied());
        self.permissions
            .iter()
            .filter_map(|permission| permission.parse::<Permission>().ok())
            .chain(roles)
            .collect()
    }
}

/// The authenticated caller of a request, available to every handler.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The certificate's identity; recorded on what the caller creates.
    pub identity: Identity,
    permissions: BTreeSet<Permission>,
    /// The users this caller may act for.
    namespaces: UserNamespaces,
    /// This caller's own submit quota, if configured.
    pub(crate) quota_per_minute: Option<u64>,
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// `PERMISSION_DENIED` unless the caller holds `permission`.
    pub(crate) fn require(&self, permission: Permission, action: &str) -> Result<(), Status> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{action} needs the {permission} permission, which {} does not have",
                self.identity
            )))
        }
    }

    /// Whether the caller may act for the user `user_id`: any user unless it is bound to user
    /// namespaces, else only users inside them.
    pub fn may_access_user(&self, user_id: &str) -> bool {
        self.namespaces.contains(user_id)
    }

    /// Whether the caller is bound to user namespaces.
    pub(crate) fn is_namespaced(&self) -> bool {
        !self.namespaces.is_unrestricted()
    }

    /// `PERMISSION_DENIED` naming `field` unless the caller may act for `user_id`. The
    /// message names the caller's own namespaces, never anything about the user.
    pub(crate) fn require_user(&self, field: &str, user_id: &str) -> Result<(), Status> {
        if self.may_access_user(user_id) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{field}: the user id is outside the user namespaces of {} ({})",
                self.identity, self.namespaces
            )))
        }
    }

    /// The user id in `field`: valid (`fields::user_id`) and one the caller may act for.
    pub(crate) fn user_id(&self, field: &str, text: &str) -> crate::error::Result<String> {
        let user_id = crate::fields::user_id(field, text)?;
        self.require_user(field, &user_id)?;
        Ok(user_id)
    }

    /// Whether the caller may read `notification` (and its events): its own, or with
    /// `notifications.read_any` another identity's. A caller bound to user namespaces reads
    /// one only when every delivery goes to a user inside them; a delivery to an address only
    /// belongs to no namespace, so it is allowed only in the caller's own notification.
    pub(crate) fn may_read_notification(&self, notification: &NotificationRecord) -> bool {
        let own = notification.submitted_by == self.identity.as_ref();
        (own || self.has(Permission::NotificationsReadAny))
            && notification
                .deliveries
                .iter()
                .all(|delivery| match &delivery.user_id {
                    Some(user_id) => self.may_access_user(user_id),
                    None => own || !self.is_namespaced(),
                })
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
    permissions: BTreeSet<Permission>,
    namespaces: UserNamespaces,
    quota_per_minute: Option<u64>,
}

/// Every RPC of Herald's own services and the permission it needs: the one table
/// authorization reads. A method missing from it is refused, so a new RPC is callable only
/// once it is here (a test checks the table against the services' descriptors). Handlers
/// check more where the request decides it: contact points need `contacts.read` to be shown
/// in clear and `contacts.write` to change, and reading another identity's notification
/// needs `notifications.read_any`.
const METHOD_PERMISSIONS: [(&str, Permission); 27] = [
    (
        "herald.submit.v1.SubmitService/Submit",
        P::NotificationsSubmit,
    ),
    (
        "herald.submit.v1.SubmitService/SubmitBatch",
        P::NotificationsSubmit,
    ),
    (
        "herald.submit.v1.SubmitService/GetNotification",
        P::NotificationsRead,
    ),
    (
        "herald.template.v1.TemplateService/CreateTemplate",
        P::TemplatesWrite,
    ),
    (
        "herald.template.v1.TemplateService/GetTemplate",
        P::TemplatesRead,
    ),
    (
        "herald.template.v1.TemplateService/ListTemplates",
        P::TemplatesRead,
    ),
    (
        "herald.template.v1.TemplateService/UpdateTemplate",
        P::TemplatesWrite,
    ),
    (
        "herald.template.v1.TemplateService/ActivateVersion",
        P::TemplatesWrite,
    ),
    (
        "herald.template.v1.TemplateService/ListVersions",
        P::TemplatesRead,
    ),
    (
        "herald.template.v1.TemplateService/GetVariantStats",
        P::TemplatesRead,
    ),
    (
        "herald.template.v1.TemplateService/RenderPreview",
        P::TemplatesRead,
    ),
    (
        "herald.preference.v1.PreferenceService/GetPreferences",
        P::PreferencesRead,
    ),
    (
        "herald.preference.v1.PreferenceService/UpdatePreferences",
        P::PreferencesWrite,
    ),
    (
        "herald.preference.v1.PreferenceService/DeletePreferences",
        P::ContactsWrite,
    ),
    ("herald.inbox.v1.InboxService/ListInbox", P::InboxRead),
    ("herald.inbox.v1.InboxService/GetUnreadCount", P::InboxRead),
    ("herald.inbox.v1.InboxService/MarkRead", P::InboxWrite),
    ("herald.inbox.v1.InboxService/MarkAllRead", P::InboxWrite),
    ("herald.inbox.v1.InboxService/Archive", P::InboxWrite),
    ("herald.inbox.v1.InboxService/Subscribe", P::InboxRead),
    (
        "herald.tracking.v1.TrackingService/RecordEvent",
        P::EventsRecord,
    ),
    (
        "herald.tracking.v1.TrackingService/ListEvents",
        P::EventsRead,
    ),
    ("herald.admin.v1.AdminService/GetQueueStats", P::QueuesRead),
    (
        "herald.admin.v1.AdminService/ListFailures",
        P::FailuresAdmin,
    ),
    ("herald.admin.v1.AdminService/GetFailure", P::FailuresAdmin),
    (
        "herald.admin.v1.AdminService/ReplayFailures",
        P::FailuresAdmin,
    ),
    (
        "herald.admin.v1.AdminService/DiscardFailures",
        P::FailuresAdmin,
    ),
];

/// Methods any configured principal may call, whatever its permissions (an unknown identity
/// is still refused): health checks and server reflection.
const OPEN_METHODS: [&str; 4] = [
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The service and method of `path` when the server serves it (the table and the open
/// methods), as static names: what metrics and spans are labelled with.
pub(crate) fn known_method(path: &str) -> Option<(&'static str, &'static str)> {
    let path = path.strip_prefix('/')?;
    METHOD_PERMISSIONS
        .iter()
        .map(|(method, _)| *method)
        .chain(OPEN_METHODS)
        .find(|method| *method == path)
        .and_then(|method| method.split_once('/'))
}

/// The permission the RPC at `path` (`/package.Service/Method`) needs, if it is in the table.
fn required_permission(path: &str) -> Option<Permission> {
    let path = path.strip_prefix('/')?;
    METHOD_PERMISSIONS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, permission)| *permission)
}

/// Authenticates every call from the TLS peer certificate and authorizes it by
/// `METHOD_PERMISSIONS`, before the service sees it; the handlers read the `Caller` it attaches.
#[derive(Clone)]
pub(crate) struct Authenticator {
    principals: Arc<HashMap<Identity, Principal>>,
}

impl Authenticator {
    /// The authenticator of `settings`, refused when they are invalid (`main` validated them
    /// already; settings built in code are checked here again).
    pub(crate) fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let mut problems = Vec::new();
        settings.validate(&mut problems);
        if !problems.is_empty() {
            anyhow::bail!("invalid auth settings: {}", problems.join("; "));
        }
        let mut principals = HashMap::new();
        for principal in &settings.principals {
            principals.insert(
                Identity::parse(&principal.identity)?,
                Principal {
                    permissions: principal.grants(),
                    namespaces: UserNamespaces::parse(&principal.user_namespaces)?,
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
            permissions,
            namespaces,
            quota_per_minute,
        } = self.principals.get(&identity).cloned().ok_or_else(|| {
            Status::permission_denied(format!(
                "identity {identity} is not configured in auth.principals"
            ))
        })?;
        let caller = Caller {
            identity,
            permissions,
            namespaces,
            quota_per_minute,
        };
        let method = path.rsplit('/').next().unwrap_or(path);
        if path
            .strip_prefix('/')
            .is_some_and(|path| OPEN_METHODS.contains(&path))
        {
            return Ok(caller);
        }
        let permission = required_permission(path).ok_or_else(|| {
            Status::permission_denied(format!("{method} is not in the authorization table"))
        })?;
        caller.require(permission, method)?;
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

    use herald_config::Validate as _;

    use super::{
        AuthSettings, METHOD_PERMISSIONS, PrincipalSettings, known_method, required_permission,
    };

    fn principal(roles: &[&str], user_namespaces: &[&str]) -> PrincipalSettings {
        PrincipalSettings {
            identity: "spiffe://herald.local/service/shop".into(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            permissions: Vec::new(),
            quota_per_minute: None,
            user_namespaces: user_namespaces
                .iter()
                .map(|prefix| (*prefix).to_owned())
                .collect(),
        }
    }

    fn problems(principals: Vec<PrincipalSettings>) -> Vec<String> {
        let mut problems = Vec::new();
        AuthSettings { principals }.validate(&mut problems);
        problems
    }

    #[test]
    fn user_namespaces_are_optional_prefixes_and_exclude_operator_permissions() {
        assert_eq!(
            problems(vec![principal(&["admin"], &[])]),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(vec![principal(&["submit", "inbox"], &["shop:", "blog/"])]),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(vec![
                principal(&["submit"], &["shop:", ""]),
                principal(&["admin"], &["shop"]),
            ]),
            [
                "auth.principals[0].user_namespaces[1]: must be 1 to 255 non-blank characters \
                 without control characters",
                "auth.principals[1].user_namespaces[0]: `shop` must end with a separator such as \
                 `:` (a user-id prefix without one would also match longer names)",
                "auth.principals[1]: failures.admin spans every user namespace (failures of all \
                 users); a principal with user_namespaces cannot hold it",
                "auth.principals[1]: templates.write spans every user namespace (templates every \
                 product's users receive); a principal with user_namespaces cannot hold it",
                "auth.principals[1]: the identity is listed already (principals[0]); give each \
                 identity one entry",
            ]
        );
        assert!(
            super::Authenticator::new(&AuthSettings {
                principals: vec![principal(&["admin"], &["shop:"])],
            })
            .is_err(),
            "settings built in code are checked too"
        );
    }

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
        let mut table: Vec<String> = METHOD_PERMISSIONS
            .iter()
            .map(|(method, _)| (*method).to_owned())
            .collect();
        table.sort();
        assert_eq!(table, methods);
        assert_eq!(
            required_permission("/herald.admin.v1.AdminService/ReplayFailures"),
            Some(herald_domain::Permission::FailuresAdmin)
        );
        assert_eq!(
            required_permission("/herald.admin.v1.AdminService/Nope"),
            None
        );
        assert_eq!(
            known_method("/herald.submit.v1.SubmitService/Submit"),
            Some(("herald.submit.v1.SubmitService", "Submit"))
        );
        assert_eq!(
            known_method("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(known_method("/made.up/Path"), None);
    }
}
