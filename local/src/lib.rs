//! keel-local: the runtime behind `keelctl up` (design.md §5).
//!
//! [`net`] gives each pod a network namespace with its own address on a bridge, recording
//! every change before making it so teardown works from the record even after a crash;
//! [`dns`] gives services virtual IPs and pods their hosts files; [`images`] maps container
//! images to local programs; [`workload`] decides which pods the configuration asks for.

pub mod bootstrap;
pub mod capture;
pub mod dns;
pub mod images;
pub mod net;
pub mod probe;
pub mod prometheus;
pub mod runtime;
pub mod status;
pub mod supervise;
pub mod workload;
