//! Test harness: real servers and clients on 127.0.0.1:0.
#![allow(dead_code)]

pub mod check;
