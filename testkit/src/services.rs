//! `scripts/services.sh` control for the tests that take a shared service away (the outage
//! tests), with a guard that starts it again however the test ends.

use std::process::Command;

use crate::env::repo;

/// Runs `scripts/services.sh args…` (with the caller's `COINSTREAM_SERVICES_DIR`, so it controls
/// the same services the endpoints point at); panics when it fails.
pub fn services(args: &[&str]) {
    let script = repo().join("scripts/services.sh");
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} {args:?} failed: {status}",
        script.display()
    );
}

/// Stops `service` (`kafka` or `cassandra`) and starts it again when dropped, unless
/// [`Stopped::start`] already did: a failing assertion never leaves a shared service down.
#[must_use = "the service is started again when this guard is dropped"]
pub struct Stopped {
    service: &'static str,
    started: bool,
}

impl Stopped {
    /// Stops `service` with `scripts/services.sh stop <service>`.
    pub fn stop(service: &'static str) -> Self {
        let guard = Self {
            service,
            started: false,
        };
        services(&["stop", service]);
        guard
    }

    /// Starts the service again now (and waits until it is ready, as `services.sh start` does).
    pub fn start(&mut self) {
        services(&["start", self.service]);
        self.started = true;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            // Never panic in drop (the test may already be unwinding); the next test reports a
            // service that is still down.
            let _ = Command::new("bash")
                .arg(repo().join("scripts/services.sh"))
                .args(["start", self.service])
                .status();
        }
    }
}
