//! Test harness: real servers and clients on 127.0.0.1:0.
#![allow(dead_code)]

pub mod backend;
pub mod http_client;
pub mod redis;
pub mod stomp_client;
