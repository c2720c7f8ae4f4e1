# An Ansible connection for the tests' hosts: commands run through nsenter in every namespace
# of a process (a systemd-nspawn container's PID 1: ansible_nsenter_pid) or in a named network
# namespace only (a lab namespace such as etcd's: ansible_nsenter_netns). Files go in and out
# through cat. Test-only: nodes are reached over SSH in real life.
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = r"""
name: nsenter_target
short_description: run in the namespaces of a process or in a network namespace
description:
  - Runs commands with nsenter --target PID --all, or ip netns exec NETNS.
options:
  nsenter_pid:
    description: the process whose namespaces are entered (a container's PID 1)
    vars:
      - name: ansible_nsenter_pid
  nsenter_netns:
    description: the named network namespace (when there is no PID)
    vars:
      - name: ansible_nsenter_netns
"""


class Connection(ConnectionBase):
    transport = "nsenter_target"
    has_pipelining = True

    def _prefix(self):
        pid = self.get_option("nsenter_pid")
        if pid:
            return ["nsenter", "--target", str(pid), "--all", "--"]
        netns = self.get_option("nsenter_netns")
        if netns:
            return ["ip", "netns", "exec", str(netns)]
        raise AnsibleConnectionFailure("set ansible_nsenter_pid or ansible_nsenter_netns")

    def _connect(self):
        self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        p = subprocess.Popen(self._prefix() + ["/bin/sh", "-c", cmd], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(in_data)
        return p.returncode, out, err

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as f:
            p = subprocess.run(self._prefix() + ["/bin/sh", "-c", "cat > " + shlex.quote(out_path)],
                               stdin=f, capture_output=True)
        if p.returncode != 0:
            raise AnsibleError("put_file %s: %s" % (out_path, p.stderr.decode(errors="replace")))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as f:
            p = subprocess.run(self._prefix() + ["cat", in_path], stdout=f, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise AnsibleError("fetch_file %s: %s" % (in_path, p.stderr.decode(errors="replace")))

    def close(self):
        self._connected = False
