# Sourced by tests/run.sh and tests/lab.sh: installs the Debian packages of tests/deps.txt
# and tests/deps-no-recommends.txt that are missing (apt-get update first, only when
# something is missing), virtme-ng for the VM lane (tests/vm.sh) and ansible-core for the
# Ansible role's test (crates/flanneld/tests/ansible.rs) into venvs outside the checkout.
missing=()
missing_nr=()
for list in tests/deps.txt tests/deps-no-recommends.txt; do
  while read -r pkg; do
    case "$pkg" in ''|'#'*) continue ;; esac
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' && continue
    if [ "$list" = tests/deps.txt ]; then missing+=("$pkg"); else missing_nr+=("$pkg"); fi
  done < "$list"
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_nr[@]} -gt 0 ]; then
  echo "installing: ${missing[*]} ${missing_nr[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  [ ${#missing[@]} -eq 0 ] || apt-get install -y -q "${missing[@]}"
  [ ${#missing_nr[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${missing_nr[@]}"
fi
VNG_VENV=/opt/flanneld-rs-vng
if [ ! -x "$VNG_VENV/bin/vng" ]; then
  echo "installing virtme-ng into $VNG_VENV"
  python3 -m venv "$VNG_VENV" && "$VNG_VENV/bin/pip" install -q 'virtme-ng==1.42'
fi
ANSIBLE_VENV=/opt/flanneld-rs-ansible
if [ ! -x "$ANSIBLE_VENV/bin/ansible-playbook" ]; then
  echo "installing ansible-core into $ANSIBLE_VENV"
  python3 -m venv "$ANSIBLE_VENV" && "$ANSIBLE_VENV/bin/pip" install -q 'ansible-core==2.17.14'
fi
