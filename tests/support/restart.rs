//! Restarts of a test gateway on the same data and configuration: cleanly, or with its index
//! changed while it is down.

use std::time::{Duration, Instant};

use tensorgate::config::Config;
use tensorgate::server;

use super::{scheme_of, TestGateway};

impl TestGateway {
    /// Shuts the gateway down cleanly and starts it again on the same data and configuration
    /// (on a new port): what a restart keeps is what the index and the upstream hold.
    pub fn restart(&mut self) {
        let config = self.shut_down();
        self.serve_again(config);
    }

    /// Shuts the gateway down, hands its index's sled database to `change` (to leave in it what
    /// a fault could), and serves again on the same data and configuration.
    pub fn restart_changing_index(&mut self, change: impl FnOnce(&sled::Db)) {
        let config = self.shut_down();
        let index = once_the_index_is_free("the index is not let go of", || sled::open(config.data_dir.join("index")));
        change(&index);
        index.flush().unwrap();
        drop(index);
        self.serve_again(config);
    }

    /// Shuts the gateway down cleanly; returns its configuration.
    fn shut_down(&mut self) -> Config {
        let config = self.store().config.clone();
        let gateway = self.gateway.take().unwrap();
        self.runtime.block_on(gateway.shut_down()).expect("the gateway shuts down");
        config
    }

    /// Starts the gateway again on `config` once its index is free.
    pub(super) fn serve_again(&mut self, config: Config) {
        let gateway = once_the_index_is_free("the gateway does not start again", || {
            let upstream = server::open_upstream(&config).expect("upstream opens");
            self.runtime.block_on(server::start_with(config.clone(), upstream))
        });
        self.endpoint = format!("{}://{}", scheme_of(&config), gateway.address);
        self.gateway = Some(gateway);
    }
}

/// `attempt`, again every 100 ms for up to ten seconds until it succeeds: the aborted tasks of
/// a gateway shut down, and sled's own threads, let go of its index a moment after its store
/// is dropped.
fn once_the_index_is_free<T, E: std::fmt::Display>(failing: &str, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let started = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(_) if started.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => panic!("{failing}: {error:#}"),
        }
    }
}
