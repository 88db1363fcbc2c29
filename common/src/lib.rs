//! What every Usage Transparency Service process shares: configuration groups ([`config`]),
//! telemetry ([`telemetry`]), graceful shutdown ([`shutdown`]), Kafka helpers ([`kafka`]), the
//! PostgreSQL pool and the one migrations directory ([`db`]), domain types ([`domain`]), the
//! `mdsp.core.generic.*` error model ([`error`]), the consumer runner every stage uses
//! ([`runner`]), JWT authentication ([`auth`]), the tenant directory ([`tenants`]), the admin
//! listener with `/healthz`, `/readyz`, `/metrics` ([`admin`]), how the allocators return freed
//! memory ([`alloc`]), HTTP serving with timeouts and a connection cap ([`http`]) and the
//! per-tenant rate limit of the HTTP APIs ([`throttle`]).
//!
//! Stages never depend on each other; they meet only here and in the `uts-proto` contracts.

pub mod admin;
// Its allocator settings are calls into glibc and mimalloc: the one module with `unsafe`.
#[allow(unsafe_code)]
pub mod alloc;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod kafka;
pub mod runner;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tenants;
pub mod throttle;
pub mod tokens;
pub mod trace;

pub use uts_proto as proto;

/// Base path of the public HTTP API.
pub const API_BASE: &str = "/api/usagetransparency/v3";
