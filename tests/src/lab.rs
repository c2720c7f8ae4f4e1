//! The lab: a few "hosts" as network namespaces on one underlay bridge (in a namespace of its
//! own), etcd in another namespace, flanneld on every host with upstream-style flags, and
//! "pods" as namespaces wired by the flannel CNI plugin of this project, which delegates to
//! the real CNI `bridge` + `host-local` plugins (Debian's containernetworking-plugins). Nothing attaches to the
//! root namespace: no traffic can leave the machine.
//!
//! Layout (`<lab>` is the lab's name):
//! ```text
//!   <lab>-br     bridge br0, one veth port per host and one for etcd
//!   <lab>-etcd   eth0 192.168.77.254/24, etcd on :2379
//!   <lab>-e1, -e2 with a 3-member cluster ([`Lab::create_with_etcd_cluster`]): the other
//!                members, eth0 192.168.77.252 and .253 (member 3 is <lab>-etcd)
//!   <lab>-h1..   eth0 192.168.77.N/24 and fd77::N/64, flanneld, cni0, pods
//!   <lab>-h1p1.. a pod: eth0 with an address of its host's subnet (one per family the
//!                network config enables)
//! ```
//! Every underlay address has its IPv6 twin (`fd77::<last byte>/64`, added without duplicate
//! address detection), so that one lab runs IPv4, dual-stack and IPv6-only configs.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::etcd::TestEtcd;

/// The underlay's /24.
pub const UNDERLAY: &str = "192.168.77";
/// The underlay's IPv6 /64: host N is `fd77::N`.
pub const UNDERLAY6: &str = "fd77::";
pub const ETCD_IP: &str = "192.168.77.254";
/// The members of a 3-member cluster: namespace suffix and address; the last is the
/// single-member lab's etcd.
pub const ETCD_MEMBERS: [(&str, &str); 3] = [
    ("e1", "192.168.77.252"),
    ("e2", "192.168.77.253"),
    ("etcd", ETCD_IP),
];
pub const HEALTHZ_PORT: u16 = 9090;
pub const DEFAULT_CONFIG: &str =
    r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
pub const DEFAULT_PREFIX: &str = "/kubernetes-cluster/network";

/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

pub struct LabSpec {
    /// Short (namespace and interface names derive from it): at most 8 characters.
    pub name: String,
    pub flanneld: PathBuf,
    /// The flannel CNI plugin (crate flannel-cni); pods are wired through it.
    pub cni_plugin: PathBuf,
    /// etcd prefix.
    pub prefix: String,
    /// Extra flags for every flanneld.
    pub extra_flags: Vec<String>,
    /// Where logs, subnet.env files and etcd's data go.
    pub dir: PathBuf,
    /// Extra flags for etcd (e.g. `--enable-v2=true`).
    pub etcd_args: Vec<String>,
}

pub struct Host {
    pub index: usize,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub subnet_file: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// A process that holds the host's own mount namespace, with a /run of its own
    /// ([`Lab::private_run`]); flanneld and [`Lab::on_host`] run in it.
    holder: Option<Child>,
}

pub struct Pod {
    pub ns: String,
    /// 0.0.0.0 for a pod of an IPv6-only network.
    pub ip: Ipv4Addr,
    /// With IPv6 enabled in the network config.
    pub ip6: Option<Ipv6Addr>,
    pub host: usize,
}

pub struct Lab {
    pub spec: LabSpec,
    /// Always `Some` but in `drop` of a kept lab.
    etcd: Option<TestEtcd>,
    /// With a 3-member cluster: the other two members (`etcd` is the third).
    other_members: Vec<TestEtcd>,
    /// `-etcd-endpoints` of the hosts.
    etcd_endpoints: String,
    pub hosts: Vec<Host>,
    pub pods: Vec<Pod>,
    /// `lab up` leaves everything running for `lab down`.
    keep: bool,
    /// Kube mode: the API server every flanneld talks to instead of etcd, and the
    /// net-conf.json they read.
    kube: Option<(crate::kube::TestApiServer, PathBuf)>,
}

/// Runs a command in a named namespace (`ip netns exec`); panics with stderr on failure.
pub fn nsexec(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    crate::netns::run_cmd("ip", &full)
}

/// Like [`nsexec`] but returns success and output instead of panicking.
pub fn try_nsexec(ns: &str, args: &[&str]) -> (bool, String) {
    match Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
    {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// `ip -n <ns> ARGS`
fn ipn(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    crate::netns::run_cmd("ip", &full)
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Every namespace whose name starts with `prefix-`.
pub fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

/// The labs alive in this process (not kept by [`Lab::keep`]): what
/// [`destroy_live_labs`] removes when the process dies of a panic.
static LIVE_LABS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Removes every lab of this process that is still alive (its processes and namespaces).
/// For a panic hook: the release profile aborts on panic, so no `Drop` runs (the harness
/// and `lab up` install [`cleanup_on_panic`]).
pub fn destroy_live_labs() {
    let names = match LIVE_LABS.try_lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(_) => return,
    };
    for name in names {
        eprintln!("cleaning up lab {name} after the failure");
        destroy(&name);
    }
}

/// Installs a panic hook that prints the panic as usual, then removes this process's live
/// labs: a failed run leaves no etcd, no flanneld and no namespace behind, even when
/// panics abort.
pub fn cleanup_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        destroy_live_labs();
    }));
}

/// Kills every process in the lab's namespaces and deletes them (for `lab down`, and for a
/// lab that a killed test left behind).
pub fn destroy(prefix: &str) {
    for ns in namespaces_of(prefix) {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
    for ns in namespaces_of(prefix) {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
}

impl Lab {
    /// The underlay, etcd (with `config` put, when given) and `hosts` host namespaces.
    /// flanneld is not started yet: see [`Lab::start`].
    pub fn create(spec: LabSpec, hosts: usize, config: Option<&str>) -> Lab {
        Self::create_with_members(spec, hosts, config, 1, None)
    }

    /// The same with etcd over TLS (client certificates of `certs`' CA demanded), at
    /// `https://ETCD_IP:2379`.
    pub fn create_with_tls(
        spec: LabSpec,
        hosts: usize,
        config: Option<&str>,
        certs: &crate::tls::TestCerts,
    ) -> Lab {
        Self::create_with_members(spec, hosts, config, 1, Some(certs))
    }

    /// The same with a 3-member etcd cluster (each member in a namespace of its own, see
    /// [`ETCD_MEMBERS`]); every host gets all three endpoints.
    pub fn create_with_etcd_cluster(spec: LabSpec, hosts: usize, config: Option<&str>) -> Lab {
        Self::create_with_members(spec, hosts, config, 3, None)
    }

    fn create_with_members(
        spec: LabSpec,
        hosts: usize,
        config: Option<&str>,
        members: usize,
        tls: Option<&crate::tls::TestCerts>,
    ) -> Lab {
        assert!(tls.is_none() || members == 1, "TLS with one member only");
        assert!(spec.name.len() <= 8, "lab name too long");
        crate::require_program("ip", "iproute2");
        destroy(&spec.name);
        if let Ok(mut live) = LIVE_LABS.lock() {
            live.push(spec.name.clone());
        }
        fs::create_dir_all(&spec.dir).expect("lab dir");
        let br = format!("{}-br", spec.name);
        let etcd_ns = format!("{}-etcd", spec.name);
        crate::netns::run_cmd("ip", &["netns", "add", &br]);
        ipn(&br, &["link", "set", "lo", "up"]);
        ipn(&br, &["link", "add", "br0", "type", "bridge"]);
        ipn(&br, &["link", "set", "br0", "up"]);
        let etcd_args: Vec<&str> = spec.etcd_args.iter().map(String::as_str).collect();
        let (etcd, other_members, etcd_endpoints) = if members == 1 {
            crate::netns::run_cmd("ip", &["netns", "add", &etcd_ns]);
            plug(&br, &etcd_ns, "port-etcd", ETCD_IP);
            match tls {
                Some(certs) => (
                    TestEtcd::start_tls_in_netns(certs, &etcd_ns, ETCD_IP, &etcd_args),
                    Vec::new(),
                    format!("https://{ETCD_IP}:2379"),
                ),
                None => (
                    TestEtcd::start_in_netns(&etcd_ns, ETCD_IP, &etcd_args),
                    Vec::new(),
                    format!("http://{ETCD_IP}:2379"),
                ),
            }
        } else {
            let namespaces: Vec<(String, &str)> = ETCD_MEMBERS
                .iter()
                .map(|(suffix, ip)| (format!("{}-{suffix}", spec.name), *ip))
                .collect();
            for (ns, ip) in &namespaces {
                crate::netns::run_cmd("ip", &["netns", "add", ns]);
                let port = format!("port-{}", ns.rsplit('-').next().unwrap_or("etcd"));
                plug(&br, ns, &port, ip);
            }
            let refs: Vec<(&str, &str)> = namespaces
                .iter()
                .map(|(ns, ip)| (ns.as_str(), *ip))
                .collect();
            let mut cluster = TestEtcd::start_cluster(&refs, &etcd_args);
            let etcd = cluster.pop().expect("three members");
            let endpoints: Vec<String> = ETCD_MEMBERS
                .iter()
                .map(|(_, ip)| format!("http://{ip}:2379"))
                .collect();
            (etcd, cluster, endpoints.join(","))
        };
        if let Some(config) = config {
            etcd.ctl(&["put", &format!("{}/config", spec.prefix), config]);
        }
        let mut lab = Lab {
            spec,
            etcd: Some(etcd),
            other_members,
            etcd_endpoints,
            hosts: Vec::new(),
            pods: Vec::new(),
            keep: false,
            kube: None,
        };
        for _ in 0..hosts {
            lab.add_host();
        }
        lab
    }

    pub fn etcd(&self) -> &TestEtcd {
        self.etcd.as_ref().expect("etcd handle")
    }

    pub fn etcd_mut(&mut self) -> &mut TestEtcd {
        self.etcd.as_mut().expect("etcd handle")
    }

    /// Member `i` (0, 1, 2) of a 3-member cluster; 2 is [`Lab::etcd`].
    pub fn member(&self, i: usize) -> &TestEtcd {
        match i {
            0 | 1 => &self.other_members[i],
            _ => self.etcd(),
        }
    }

    pub fn member_mut(&mut self, i: usize) -> &mut TestEtcd {
        match i {
            0 | 1 => &mut self.other_members[i],
            _ => self.etcd_mut(),
        }
    }

    /// The namespace of member `i` of a 3-member cluster.
    pub fn member_ns(&self, i: usize) -> String {
        format!("{}-{}", self.spec.name, ETCD_MEMBERS[i].0)
    }

    fn br(&self) -> String {
        format!("{}-br", self.spec.name)
    }

    /// One more host namespace on the underlay (flanneld not started).
    pub fn add_host(&mut self) -> usize {
        let index = self.hosts.len() + 1;
        let ns = format!("{}-h{index}", self.spec.name);
        crate::netns::run_cmd("ip", &["netns", "add", &ns]);
        let ip: Ipv4Addr = format!("{UNDERLAY}.{index}").parse().expect("host ip");
        plug(&self.br(), &ns, &format!("port-h{index}"), &ip.to_string());
        let dir = self.spec.dir.join(format!("h{index}"));
        fs::create_dir_all(&dir).expect("host dir");
        self.hosts.push(Host {
            index,
            ns,
            ip,
            subnet_file: dir.join("subnet.env"),
            log: dir.join("flanneld.log"),
            child: None,
            holder: None,
        });
        index
    }

    /// Gives every host a /run of its own (a tmpfs in a mount namespace held by a sleeping
    /// process in the host's namespace): what a backend's helper keeps at a fixed path is
    /// then each host's, as on separate machines: a userspace WireGuard's
    /// `/var/run/wireguard/<device>.sock`, strongSwan charon's `/var/run/charon.pid` and
    /// `charon.vici`. The lab's folder stays visible when it is under /run (`./tests/lab.sh`'s
    /// /run/flanneld-rs-lab). flanneld, its restarts and [`Lab::on_host`] run in it from now
    /// on. (The folder is bound back from a descriptor opened before /run is covered, with
    /// mount's `--no-canonicalize`: canonicalized, its path would name the new, empty one.)
    pub fn private_run(&mut self) {
        let keep = self.spec.dir.display().to_string();
        let script = format!(
            "set -e; keep={keep:?}; case \"$keep\" in /run/*) exec 3<\"$keep\" ;; *) keep= ;; esac; \
             mount -t tmpfs tmpfs /run; \
             if [ -n \"$keep\" ]; then mkdir -p \"$keep\"; mount --no-canonicalize --bind /proc/self/fd/3 \"$keep\"; exec 3<&-; fi; \
             mkdir -p /run/wireguard /run/flannel; exec sleep infinity"
        );
        for h in &mut self.hosts {
            if h.holder.is_some() {
                continue;
            }
            let holder = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &h.ns,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                ])
                .args(["sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the mount namespace holder");
            let comm = format!("/proc/{}/comm", holder.id());
            assert!(
                wait_until(Duration::from_secs(10), || fs::read_to_string(&comm)
                    .is_ok_and(|c| c.trim() == "sleep")),
                "the mount namespace of {} did not come up",
                h.ns
            );
            h.holder = Some(holder);
        }
    }

    /// The command that runs `program` on host `index`: in its namespace, and in its mount
    /// namespace when it has one.
    fn host_command(&self, index: usize, program: &str) -> Command {
        let h = &self.hosts[index - 1];
        match &h.holder {
            Some(holder) => {
                let mut cmd = Command::new("nsenter");
                cmd.args(["-t", &holder.id().to_string(), "-m", "-n", "--", program]);
                cmd
            }
            None => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &h.ns, program]);
                cmd
            }
        }
    }

    /// Kube mode for every flanneld started from now on: a kube-apiserver on the etcd
    /// namespace's address (`https://192.168.77.254:6443`) over the lab's etcd, and
    /// `net_conf` as every host's `-net-config-path`. Nodes are created by the test
    /// ([`crate::kube::TestApiServer::create_node`]); host `i`'s node is `h<i>`.
    pub fn use_kube(&mut self, authz: crate::kube::Authz, net_conf: &str) {
        let etcd_ns = format!("{}-etcd", self.spec.name);
        let server = crate::kube::TestApiServer::start(
            &etcd_ns,
            ETCD_IP,
            &format!("http://{ETCD_IP}:2379"),
            &self.spec.dir,
            authz,
        );
        let path = self.spec.dir.join("net-conf.json");
        fs::write(&path, net_conf).expect("net-conf.json");
        self.kube = Some((server, path));
    }

    /// The API server of kube mode.
    pub fn kube(&self) -> &crate::kube::TestApiServer {
        &self.kube.as_ref().expect("kube mode (Lab::use_kube)").0
    }

    pub fn kube_mut(&mut self) -> &mut crate::kube::TestApiServer {
        &mut self.kube.as_mut().expect("kube mode (Lab::use_kube)").0
    }

    /// The Node name of host `index` in kube mode.
    pub fn node_name(&self, index: usize) -> String {
        format!("h{index}")
    }

    /// The flags flanneld gets on host `index` (1-based), upstream style.
    pub fn flags(&self, index: usize) -> Vec<String> {
        let h = &self.hosts[index - 1];
        let store = match &self.kube {
            Some((server, net_conf)) => vec![
                "-kube-subnet-mgr".to_string(),
                format!("-kubeconfig-file={}", server.kubeconfig.display()),
                format!("-net-config-path={}", net_conf.display()),
            ],
            None => vec![
                format!("-etcd-endpoints={}", self.etcd_endpoints),
                format!("-etcd-prefix={}", self.spec.prefix),
            ],
        };
        let mut flags = store;
        flags.extend([
            "-iface=eth0".to_string(),
            "-ip-masq".to_string(),
            format!("-subnet-file={}", h.subnet_file.display()),
            format!("-healthz-ip={}", h.ip),
            format!("-healthz-port={HEALTHZ_PORT}"),
        ]);
        flags.extend(self.spec.extra_flags.iter().cloned());
        flags
    }

    /// Starts flanneld on host `index` (1-based), appending to its log.
    pub fn start(&mut self, index: usize) {
        let flanneld = self.spec.flanneld.clone();
        self.start_binary(index, &flanneld, &[]);
    }

    /// Starts flanneld on host `index` with flags added after the lab's (a later flag wins).
    pub fn start_with_flags(&mut self, index: usize, extra: &[&str]) {
        let flanneld = self.spec.flanneld.clone();
        self.start_full(index, &flanneld, &[], extra);
    }

    /// Starts `flanneld` (any flanneld binary: this project's or upstream's) on host `index`
    /// with the lab's flags and extra environment.
    pub fn start_binary(&mut self, index: usize, flanneld: &Path, env: &[(String, String)]) {
        self.start_full(index, flanneld, env, &[]);
    }

    /// Starts `flanneld` on host `index` with extra environment and flags added after the
    /// lab's (a later flag wins).
    pub fn start_full(
        &mut self,
        index: usize,
        flanneld: &Path,
        env: &[(String, String)],
        extra: &[&str],
    ) {
        let mut flags = self.flags(index);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let node_name = self.kube.as_ref().map(|_| self.node_name(index));
        let mut cmd = self.host_command(index, &flanneld.to_string_lossy());
        let h = &mut self.hosts[index - 1];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .expect("log file");
        let key_file = h.log.with_file_name("wgkey");
        cmd.args(&flags)
            .envs(node_name.map(|n| ("NODE_NAME".to_string(), n)))
            // the WireGuard key: each host its own (upstream's /run/flannel/wgkey is shared)
            .env("WIREGUARD_KEY_FILE", key_file)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // not in our process group: a Ctrl-C at `lab up` must not reach the daemons
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        h.child = Some(cmd.spawn().expect("start flanneld"));
    }

    pub fn start_all(&mut self) {
        for i in 1..=self.hosts.len() {
            self.start(i);
        }
    }

    /// The pid of flanneld on host `index`.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.hosts[index - 1].child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. "TERM", "KILL") and waits for the exit; returns the exit status
    /// (`None` if killed by a signal).
    pub fn stop(&mut self, index: usize, signal: &str) -> Option<i32> {
        let child = self.hosts[index - 1].child.as_mut()?;
        let _ = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status();
        let status = child.wait().ok()?;
        self.hosts[index - 1].child = None;
        status.code()
    }

    /// Whether flanneld on host `index` still runs.
    pub fn running(&mut self, index: usize) -> bool {
        match self.hosts[index - 1].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log(&self, index: usize) -> String {
        fs::read_to_string(&self.hosts[index - 1].log).unwrap_or_default()
    }

    /// An HTTP request from inside host `index` to its healthz server: (status, body).
    pub fn http(&self, index: usize, path: &str, method: &str) -> Option<(u16, String)> {
        let h = &self.hosts[index - 1];
        let url = format!("http://{}:{HEALTHZ_PORT}{path}", h.ip);
        let (ok, out) = try_nsexec(
            &h.ns,
            &[
                "curl",
                "-s",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "--max-time",
                "2",
                &url,
            ],
        );
        if !ok {
            return None;
        }
        let (body, code) = out.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// `/readyz` answers 200; for a flanneld without `/readyz` (upstream answers 404 there),
    /// once subnet.env is written.
    pub fn ready(&self, index: usize) -> bool {
        match self.http(index, "/readyz", "GET") {
            Some((200, _)) => true,
            Some((404, _)) => self.hosts[index - 1].subnet_file.exists(),
            _ => false,
        }
    }

    /// Waits until every started host answers /readyz with 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let started: Vec<usize> = (1..=self.hosts.len())
            .filter(|i| self.hosts[i - 1].child.is_some())
            .collect();
        let ok = wait_until(timeout, || started.iter().all(|i| self.ready(*i)));
        if !ok {
            let logs: Vec<String> = started
                .iter()
                .map(|i| format!("--- h{i}\n{}", self.log(*i)))
                .collect();
            panic!("hosts not ready within {timeout:?}\n{}", logs.join("\n"));
        }
    }

    /// FLANNEL_SUBNET etc. of host `index`.
    pub fn subnet_env(&self, index: usize) -> String {
        fs::read_to_string(&self.hosts[index - 1].subnet_file).unwrap_or_default()
    }

    fn env_value(&self, index: usize, key: &str) -> Option<String> {
        self.subnet_env(index)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(String::from))
    }

    /// The host's subnet in network form (`10.200.74.0/24`), from its subnet.env.
    pub fn subnet(&self, index: usize) -> Option<String> {
        let first = self.env_value(index, "FLANNEL_SUBNET")?;
        let (ip, len) = first.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        Some(format!("{}/{len}", Ipv4Addr::from(u32::from(ip) - 1)))
    }

    /// The host's IPv6 subnet in network form (`fd00:200:0:1f::/64`), from its subnet.env.
    pub fn subnet6(&self, index: usize) -> Option<String> {
        let first = self.env_value(index, "FLANNEL_IPV6_SUBNET")?;
        let (ip, len) = first.split_once('/')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        Some(format!("{}/{len}", Ipv6Addr::from(u128::from(ip) - 1)))
    }

    /// The host's IPv6 underlay address (`fd77::N`).
    pub fn ip6(&self, index: usize) -> Ipv6Addr {
        let last = self.hosts[index - 1].ip.octets()[3];
        format!("{UNDERLAY6}{last}").parse().expect("underlay IPv6")
    }

    /// A pod on host `index`, wired as the kubelet would: the flannel CNI plugin with the
    /// conflist's config, delegating to Debian's `bridge` and `host-local`.
    pub fn add_pod(&mut self, index: usize) -> usize {
        crate::require_program("/usr/lib/cni/bridge", "containernetworking-plugins");
        assert!(
            self.spec.cni_plugin.is_file(),
            "the flannel CNI plugin {} is missing: build the workspace (cargo build -p flannel-cni)",
            self.spec.cni_plugin.display()
        );
        let n = self.pods.len() + 1;
        let host = &self.hosts[index - 1];
        let host_ns = host.ns.clone();
        let ns = format!("{}-h{index}p{n}", self.spec.name);
        crate::netns::run_cmd("ip", &["netns", "add", &ns]);
        ipn(&ns, &["link", "set", "lo", "up"]);
        let dir = self.spec.dir.join(format!("h{index}"));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "cni0",
            "type": "flannel",
            "subnetFile": host.subnet_file,
            "dataDir": dir.join("cni-data"),
            "ipam": {"dataDir": dir.join("ipam")},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true}
        });
        let plugin_dir = self
            .spec
            .cni_plugin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host_ns])
            .arg(&self.spec.cni_plugin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &ns)
            .env("CNI_NETNS", format!("/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{plugin_dir}:{CNI_PATH}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the flannel CNI plugin");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("CNI config");
        let out = child.wait_with_output().expect("CNI plugin result");
        assert!(
            out.status.success(),
            "CNI ADD failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("CNI result JSON");
        let ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .expect("pod addresses")
            .iter()
            .filter_map(|a| a["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        assert!(!ips.is_empty(), "the CNI result has no address: {result}");
        let ip = ips
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let ip6 = ips.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        if ip6.is_some() {
            // duplicate address detection keeps a new IPv6 address (the pod's, cni0's)
            // unusable for a second or two: a pod is ready once none is tentative
            let settled = |ns: &str| {
                try_nsexec(ns, &["ip", "-6", "addr", "show", "tentative"])
                    .1
                    .trim()
                    .is_empty()
            };
            wait_until(Duration::from_secs(10), || {
                settled(&ns) && settled(&host_ns)
            });
        }
        self.pods.push(Pod {
            ns,
            ip,
            ip6,
            host: index,
        });
        n
    }

    /// Whether `from` (a pod's index, 1-based) gets an answer from address `to`.
    pub fn ping(&self, from: usize, to: impl Into<IpAddr>) -> bool {
        try_nsexec(
            &self.pods[from - 1].ns,
            &["ping", "-c", "1", "-W", "2", &to.into().to_string()],
        )
        .0
    }

    /// Every pod pings every other pod, at each of its addresses (IPv4 and IPv6); the
    /// failures, as (from, to) pod indexes.
    pub fn ping_matrix(&self) -> Vec<(usize, usize)> {
        let mut failed = Vec::new();
        for from in 1..=self.pods.len() {
            for to in 1..=self.pods.len() {
                let pod = &self.pods[to - 1];
                let mut targets: Vec<IpAddr> = pod.ip6.map(IpAddr::V6).into_iter().collect();
                if !pod.ip.is_unspecified() {
                    targets.push(IpAddr::V4(pod.ip));
                }
                if from != to && !targets.iter().all(|t| self.ping(from, *t)) {
                    failed.push((from, to));
                }
            }
        }
        failed
    }

    /// Runs a command in host `index`'s namespace.
    pub fn on_host(&self, index: usize, args: &[&str]) -> String {
        if self.hosts[index - 1].holder.is_none() {
            return nsexec(&self.hosts[index - 1].ns, args);
        }
        let out = self
            .host_command(index, args[0])
            .args(&args[1..])
            .output()
            .expect("run on host");
        assert!(
            out.status.success(),
            "{args:?} on host {index}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Leaves everything running when dropped (`lab up`).
    pub fn keep(mut self) {
        self.keep = true;
        forget_live(&self.spec.name);
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

/// A veth pair from the bridge namespace into `ns`, where it is `eth0` with `ip`/24.
fn plug(br: &str, ns: &str, port: &str, ip: &str) {
    ipn(
        br,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    );
    ipn(br, &["link", "set", port, "master", "br0", "up"]);
    ipn(ns, &["link", "set", "lo", "up"]);
    ipn(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    let last = ip.rsplit('.').next().unwrap_or("0");
    ipn(
        ns,
        &[
            "-6",
            "addr",
            "add",
            &format!("{UNDERLAY6}{last}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    ipn(ns, &["link", "set", "eth0", "up"]);
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            // etcd keeps running, and its data directory stays
            std::mem::forget(self.etcd.take());
            std::mem::forget(self.kube.take());
            std::mem::forget(std::mem::take(&mut self.other_members));
            return;
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some((server, _)) = self.kube.as_mut() {
            server.stop();
        }
        if let Some(etcd) = self.etcd.as_mut() {
            etcd.stop();
        }
        for m in &mut self.other_members {
            m.stop();
        }
        destroy(&self.spec.name);
        for h in &mut self.hosts {
            // killed with everything in the host's namespace: reaped here
            if let Some(mut c) = h.holder.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        forget_live(&self.spec.name);
    }
}

fn forget_live(name: &str) {
    if let Ok(mut live) = LIVE_LABS.lock() {
        live.retain(|n| n != name);
    }
}
