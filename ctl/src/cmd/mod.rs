//! One module per keelctl command.

pub mod apply;
pub mod context;
pub mod delete;
pub mod edit;
pub mod expr;
pub mod forward;
pub mod get;
pub mod input;
pub mod label;
pub mod local;
pub mod proxy;
pub mod validate;
