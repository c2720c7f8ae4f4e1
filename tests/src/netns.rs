//! Network namespaces for tests. Each test runs its kernel work on a fresh thread that has
//! unshared its network namespace: the namespace holds only what the test makes, and it dies
//! with the thread, even when the test fails. Nothing ever touches the root namespace.

use std::future::Future;
use std::process::Command;

/// Runs `test` on a new thread inside a new, empty network namespace (loopback up), with a
/// current-thread tokio runtime (so every task and child process stays in that namespace).
/// Panics of the test are passed on. Needs root: fails loudly without it.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root to create network namespaces (CI runs as root)"
    );
    let handle = std::thread::spawn(move || {
        enter_new_netns();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test());
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Moves the calling thread into a new network namespace and brings its loopback up.
pub fn enter_new_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    ip(&["link", "set", "lo", "up"]);
}

/// The kernel id of the calling thread: `ip link set X netns <tid>` moves X into its namespace.
pub fn tid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// Runs `ip ARGS` in the caller's namespace and returns stdout; panics with stderr on failure.
pub fn ip(args: &[&str]) -> String {
    run_cmd("ip", args)
}

/// `bridge ARGS`, like [`ip`].
pub fn bridge(args: &[&str]) -> String {
    run_cmd("bridge", args)
}

/// Runs a command, panics with its stderr unless it succeeds; returns stdout.
pub fn run_cmd(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a sysctl of the caller's namespace (`net/ipv6/conf/flannel.1/accept_ra`).
pub fn sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .unwrap_or_else(|e| panic!("reading /proc/sys/{path}: {e}"))
        .trim()
        .to_string()
}
