//! JSON-RPC 2.0 management with SPDK's method names, parameters and error codes.

mod connection;
pub mod dispatch;
pub mod error;
pub mod framer;
pub mod method;
pub mod server;
pub mod spdk_params;
pub mod table;

pub use dispatch::{call, serialized};
pub use error::RpcError;
pub use method::{no_params, parse, Allowed, RpcMethod};
pub use server::RpcServer;
pub use spdk_params::{SpdkParam, I32, U16, U32, U64, U8};
