#![doc = include_str!("../README.md")]
// Generated code carries no docs and uses prost's naming.
#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod conversions;

// The generated modules nest by package (`herald::submit::v1`) because generated code refers to
// other packages with `super::` paths; the short aliases below are the public names.
#[allow(clippy::too_many_lines, reason = "generated service code")]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/herald_protos.rs"));
}

/// `herald.admin.v1`: AdminService.
pub use generated::herald::admin::v1 as admin;
/// `herald.common.v1`: channels and priorities.
pub use generated::herald::common::v1 as common;
/// `herald.inbox.v1`: InboxService.
pub use generated::herald::inbox::v1 as inbox;
/// `herald.preference.v1`: PreferenceService.
pub use generated::herald::preference::v1 as preference;
/// `herald.queue.v1`: envelopes Herald puts on RabbitMQ.
pub use generated::herald::queue::v1 as queue;
/// `herald.submit.v1`: SubmitService.
pub use generated::herald::submit::v1 as submit;
/// `herald.template.v1`: TemplateService.
pub use generated::herald::template::v1 as template;
/// `herald.tracking.v1`: TrackingService.
pub use generated::herald::tracking::v1 as tracking;

/// The encoded `FileDescriptorSet` of every Herald proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herald_descriptor");
