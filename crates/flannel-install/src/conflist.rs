//! The CNI network config `10-flannel.conflist`, from packaging/10-flannel.conflist.in: the
//! role's content, multi-line as the role's variable is written (the role's bytes depend on
//! the Ansible version; this keeps to one form so that re-runs are no-ops).

const TEMPLATE: &str = include_str!("../../../packaging/10-flannel.conflist.in");

/// The default subnet.env path: the flannel CNI plugin reads it when the conf names none.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// `name` is the CNI network name (the role's `flannel_cni_interface`, default `cni0`).
/// A `subnet_file` other than the default is written into the plugin's conf (the role
/// forgets it, and the CNI side then reads the wrong file).
pub fn render(name: &str, cni_version: &str, subnet_file: &str) -> String {
    let subnet = if subnet_file == DEFAULT_SUBNET_FILE {
        String::new()
    } else {
        format!("\n      \"subnetFile\": {},", json_string(subnet_file))
    };
    TEMPLATE
        .replace("@@NAME@@", &escape(name))
        .replace("@@CNI_VERSION@@", &escape(cni_version))
        .replace("@@SUBNET_FILE@@", &subnet)
}

fn json_string(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_content_multi_line() {
        // the role's conflist (`templates/10-flannel.conflist.j2`) with the default name and
        // cniVersion 0.3.1
        let expected = r#"{
  "name": "cni0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;
        assert_eq!(render("cni0", "0.3.1", DEFAULT_SUBNET_FILE), expected);
    }

    #[test]
    fn packaged_example_is_the_default_rendering() {
        assert_eq!(
            render("cni0", "1.0.0", DEFAULT_SUBNET_FILE),
            include_str!("../../../packaging/examples/10-flannel.conflist")
        );
    }

    #[test]
    fn other_subnet_file_is_named_and_json_stays_valid() {
        let c = render("cni0", "1.0.0", "/run/flannel-x/sub\"net.env");
        assert!(c.contains("\"subnetFile\": \"/run/flannel-x/sub\\\"net.env\","));
        assert!(c.contains("\"cniVersion\": \"1.0.0\""));
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["plugins"][0]["subnetFile"], "/run/flannel-x/sub\"net.env");
    }
}
