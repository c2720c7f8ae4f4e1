#!/usr/bin/python3
# An Ansible module: runs `flanneld-rs install` on the node. Check mode runs it with
# --dry-run; the installer's diff is returned for --diff in both modes; "changed" is what
# the installer reports (it says "nothing changed" when the unit, the binaries, the CNI
# config and the network config in etcd were all as wanted).
import json
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: flanneld_rs_install
short_description: Installs flanneld-rs with its own installer (flanneld-rs install)
description:
  - Lays down the binary, the systemd unit, the CNI conflist and plugin, and puts the network
    config into etcd when there is none; reloads systemd and restarts flanneld only when the
    unit or the binary changed (or I(restart) is true).
options:
  binary: {description: the flanneld-rs binary on the node, required: true, type: path}
  cni_plugin: {description: the flannel CNI plugin on the node, required: true, type: path}
  bin_dir: {description: where the binary is installed as flanneld, type: path, default: /usr/local/sbin}
  flags: {description: flanneld's flags for the unit (name without dashes to value), type: dict, default: {}}
  exec_start_pre: {description: "ExecStartPre= ('none' for no line)", type: str, default: ""}
  exec_start_post: {description: ExecStartPost=, type: str, default: ""}
  restart_sec: {type: str, default: "5"}
  limit_nofile: {type: str, default: "40000"}
  limit_nproc: {type: str, default: "1048576"}
  docker: {description: Before=/RequiredBy=docker.service, type: bool, default: true}
  cni_conf_dir: {type: path, default: /etc/cni/net.d}
  cni_name: {type: str, default: cni0}
  cni_version: {type: str, default: "0.3.1"}
  cni_conflist: {description: the conflist's text (or a dict) to write as it is, type: raw}
  network: {description: the Network put into etcd when there is no config, type: str}
  backend: {type: str, default: vxlan}
  force_network_config: {type: bool, default: false}
  restart: {description: restart flanneld even if the installer did not, type: bool, default: false}
  stage_dir: {description: where the conflist text is kept for the installer, type: path, default: /var/lib/flanneld-rs}
"""


def arguments(p, dry_run):
    args = [p["binary"], "install", "--binary=" + p["binary"],
            "--cni-plugin=" + p["cni_plugin"], "--bin-dir=" + p["bin_dir"],
            "--restart-sec=" + p["restart_sec"], "--limit-nofile=" + p["limit_nofile"],
            "--limit-nproc=" + p["limit_nproc"],
            "--cni-conf-dir=" + p["cni_conf_dir"], "--cni-name=" + p["cni_name"],
            "--cni-version=" + p["cni_version"], "--backend=" + p["backend"]]
    if p["exec_start_pre"]:
        args.append("--exec-start-pre=" + p["exec_start_pre"])
    if p["exec_start_post"]:
        args.append("--exec-start-post=" + p["exec_start_post"])
    if p["docker"]:
        args.append("--docker")
    if p["network"]:
        args.append("--network=" + p["network"])
    if p["force_network_config"]:
        args.append("--force-network-config")
    for name, value in sorted(p["flags"].items()):
        if isinstance(value, bool):
            value = "true" if value else "false"
        args.append("--flag=%s=%s" % (name, value))
    if p.get("conflist_file"):
        args.append("--cni-conflist=" + p["conflist_file"])
    if dry_run:
        args.append("--dry-run")
    return args


def conflist_text(value):
    # classic Jinja templating turns a text that starts with "{" into a dict
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2) + "\n"
    return str(value)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            binary=dict(type="path", required=True),
            cni_plugin=dict(type="path", required=True),
            bin_dir=dict(type="path", default="/usr/local/sbin"),
            flags=dict(type="dict", default={}),
            exec_start_pre=dict(type="str", default=""),
            exec_start_post=dict(type="str", default=""),
            restart_sec=dict(type="str", default="5"),
            limit_nofile=dict(type="str", default="40000"),
            limit_nproc=dict(type="str", default="1048576"),
            docker=dict(type="bool", default=True),
            cni_conf_dir=dict(type="path", default="/etc/cni/net.d"),
            cni_name=dict(type="str", default="cni0"),
            cni_version=dict(type="str", default="0.3.1"),
            cni_conflist=dict(type="raw"),
            network=dict(type="str"),
            backend=dict(type="str", default="vxlan"),
            force_network_config=dict(type="bool", default=False),
            restart=dict(type="bool", default=False),
            stage_dir=dict(type="path", default="/var/lib/flanneld-rs"),
        ),
        supports_check_mode=True,
    )
    p = dict(module.params)
    if not os.path.isfile(p["binary"]):
        if module.check_mode:
            # the copy before this one did not happen: everything would be new
            module.exit_json(changed=True, msg="%s would be installed first" % p["binary"],
                             diff={"prepared": "flanneld-rs would be installed\n"})
        module.fail_json(msg="%s: no such file" % p["binary"])
    if p["cni_conflist"] is not None:
        p["conflist_file"] = os.path.join(p["stage_dir"], "10-flannel.conflist")
        if not module.check_mode:
            with open(p["conflist_file"], "w") as f:
                f.write(conflist_text(p["cni_conflist"]))
        elif not os.path.isfile(p["conflist_file"]):
            p["conflist_file"] = None

    def run(dry_run):
        rc, out, err = module.run_command(arguments(p, dry_run))
        if rc != 0:
            module.fail_json(msg="flanneld-rs install failed: " + (err.strip() or out.strip()),
                             rc=rc, stdout=out, stderr=err, cmd=arguments(p, dry_run))
        return out, err

    preview, _ = run(True)
    changed = "nothing changed" not in preview.splitlines()
    diff = {"before_header": "node", "after_header": "flanneld-rs install",
            "prepared": preview}
    out, err = preview, ""
    restarted = False
    if not module.check_mode and changed:
        out, err = run(False)
        restarted = "ran systemctl restart flanneld.service" in out
    if p["restart"] and not restarted:
        changed = True
        if not module.check_mode:
            module.run_command(["systemctl", "restart", "flanneld.service"], check_rc=True)
            restarted = True
    for line in out.splitlines():
        if line.startswith("warning: "):
            module.warn(line[len("warning: "):])
    module.exit_json(changed=changed, restarted=restarted, stdout=out, stderr=err, diff=diff)


if __name__ == "__main__":
    main()
