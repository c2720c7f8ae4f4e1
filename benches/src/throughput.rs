//! Scenario `throughput`: what a backend's data path carries between two pods on two hosts,
//! measured with iperf3 (Debian's), for each binary in turn in the same run: TCP one way for
//! `SECONDS`, then the other way, then the flanneld processes' CPU time over the transfer
//! (for the udp backend the data path is flanneld itself; for the kernel's backends it is
//! near zero). Runs with the backend `--backend` names (udp when none is named here: the
//! backend whose data path the binary is).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flannel_lab::lab::{wait_until, Lab};

use crate::{label, probe, spec, Opts, Row};

fn config() -> String {
    format!(
        r#"{{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{{"Type":"{}"}}}}"#,
        crate::backend_name().unwrap_or(flannel_net::BackendKind::Udp.name())
    )
}

/// The CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command's closing parenthesis; utime and stime are 14th and 15th
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// `iperf3 -c` from pod `from` to the server in pod `to` for `seconds`: the receiver's
/// Mbit/s and the sender's retransmits.
fn iperf(lab: &Lab, from: usize, to: usize, seconds: u64) -> (f64, f64) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.pods[from].ns, "iperf3", "-J", "-c"])
        .arg(lab.pods[to].ip.to_string())
        .args(["-t", &seconds.to_string()])
        .output()
        .expect("iperf3 -c (apt-get install iperf3)");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let end = &json["end"];
    let mbit = end["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / 1e6;
    let retransmits = end["sum_sent"]["retransmits"].as_f64().unwrap_or(f64::NAN);
    if mbit.is_nan() {
        eprintln!(
            "iperf3 gave no result: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (mbit, retransmits)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(lab: &Lab, pod: usize) -> Server {
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.pods[pod].ns, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s (apt-get install iperf3)");
    // listening before the client connects
    std::thread::sleep(Duration::from_millis(500));
    Server(child)
}

pub fn throughput(o: &Opts, dir: &Path) -> Vec<Row> {
    let seconds = if o.quick { 3 } else { 10 };
    let mut rows = Vec::new();
    for (k, bin) in o.binaries.iter().enumerate() {
        // a lab of its own (its subnet file, its pods' addresses)
        let mut spec = spec(&format!("tp{k}"), bin, dir);
        // the pods' CNI plugin is this project's, built beside flannel-bench
        spec.cni_plugin = std::env::current_exe()
            .expect("flannel-bench's path")
            .with_file_name("flannel");
        let mut lab = Lab::create(spec, 2, Some(&config()));
        lab.start_binary(1, bin, &[]);
        lab.start_binary(2, bin, &[]);
        assert!(
            wait_until(Duration::from_secs(60), || lab.subnet(1).is_some()
                && lab.subnet(2).is_some()),
            "no subnets: {}",
            lab.log(1)
        );
        lab.add_pod(1);
        lab.add_pod(2);
        assert!(
            wait_until(Duration::from_secs(60), || lab.ping_matrix().is_empty()),
            "{}: pods cannot ping: {}",
            label(bin),
            lab.log(1)
        );
        let pids: Vec<u32> = [1, 2].iter().filter_map(|&h| lab.pid(h)).collect();
        let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
        let (there, retr_there) = {
            let _s = server(&lab, 1);
            iperf(&lab, 0, 1, seconds)
        };
        let (back, retr_back) = {
            let _s = server(&lab, 0);
            iperf(&lab, 1, 0, seconds)
        };
        let cpu: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu_before;
        let hwm = pids
            .iter()
            .filter_map(|&p| probe::proc_status_kib(p, "VmHWM"))
            .max()
            .unwrap_or(0) as f64;
        rows.push(Row {
            scenario: format!(
                "throughput, {}, TCP {seconds} s each way",
                crate::backend_name().unwrap_or(flannel_net::BackendKind::Udp.name())
            ),
            binary: label(bin),
            metrics: vec![
                ("h1_to_h2_Mbit_s".into(), there),
                ("h2_to_h1_Mbit_s".into(), back),
                ("retransmits".into(), retr_there + retr_back),
                // both daemons together, over both transfers
                ("flanneld_cpu_s".into(), cpu),
                ("VmHWM_MiB".into(), hwm / 1024.0),
            ],
        });
        for h in [1, 2] {
            lab.stop(h, "TERM");
        }
        drop(lab);
    }
    rows
}
