//! `Records`: a resolver whose answer for one name the test controls, like the A records of a
//! Kubernetes headless Service as pods become ready and terminate. Any other name is NXDOMAIN.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tether::upstream::discovery::Resolve;

pub struct Records {
    name: String,
    port: u16,
    answer: Mutex<Vec<SocketAddr>>,
}

impl Records {
    /// Answers lookups of exactly `name` / `port` (as the config writes them).
    pub fn new(name: &str, port: u16) -> Arc<Records> {
        Arc::new(Records { name: name.to_owned(), port, answer: Mutex::new(Vec::new()) })
    }

    /// Replaces the whole answer.
    pub fn set(&self, addrs: &[SocketAddr]) {
        *self.answer.lock().expect("records lock") = addrs.to_vec();
    }
}

impl Resolve for Records {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        let answer = if host == self.name && port == self.port {
            Ok(self.answer.lock().expect("records lock").clone())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("no records for {host}:{port}")))
        };
        Box::pin(std::future::ready(answer))
    }
}
