//! One module per keelctl command.

pub mod validate;
