#![forbid(unsafe_code)]
pub mod admin;
pub mod config;
pub mod demo;
pub mod echo;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod upstream;
