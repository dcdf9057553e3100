//! `nifty-auth proxy` run as a process, against a `FakeNifty` started here, driven by real clients:
//! `curl`, Python's standard library (`urllib.request`) and raw TCP for what those refuse to send.
#![cfg(feature = "cli")]

#[path = "../common/cli.rs"]
mod cli;
mod harness;

mod failures;
mod forwarding;
mod grants;
mod operations;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod replicas;
mod security;
