use super::*;
use proptest::prelude::*;

fn checked(json: &str) -> Result<NetworkConfig, ConfigError> {
    NetworkConfig::from_etcd(json)
}

fn err(json: &str) -> String {
    checked(json).unwrap_err().to_string()
}

#[test]
fn upstream_example_defaults() {
    // pkg/subnet/config_test.go: TestConfigDefaults
    let c = checked(r#"{ "network": "10.3.0.0/16" }"#).unwrap();
    assert_eq!(c.network.to_string(), "10.3.0.0/16");
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 3, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 3, 255, 0));
    assert_eq!(c.subnet_len, 24);
    assert!(c.enable_ipv4);
    assert!(!c.enable_ipv6);
    assert_eq!(
        c.backend_type, "udp",
        "absent Backend means udp, as upstream"
    );
}

#[test]
fn upstream_example_overrides() {
    // Documentation/configuration.md
    let c = checked(
        r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}"#,
    )
    .unwrap();
    assert_eq!(c.subnet_len, 20);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 10, 0, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 99, 0, 0));
    assert_eq!(c.backend_type, "udp");
    assert_eq!(c.backend.as_ref().unwrap()["Port"], 7890);
}

#[test]
fn reference_lab_config() {
    let c = checked(r#"{"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#)
        .unwrap();
    assert_eq!(c.backend_type, "vxlan");
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 200, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 200, 255, 0));
}

#[test]
fn ipv6_defaults() {
    // pkg/subnet/config_test.go: TestIPv6ConfigDefaults
    let c =
        checked(r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "network": "10.3.0.0/16" }"#)
            .unwrap();
    assert_eq!(c.ipv6_subnet_min, Some("fc00:0:0:1::".parse().unwrap()));
    assert_eq!(c.ipv6_subnet_max, Some("fc00:0:0:ffff::".parse().unwrap()));
    assert_eq!(c.ipv6_subnet_len, 64);
}

#[test]
fn ipv6_only() {
    let c =
        checked(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:1::/120"}"#).unwrap();
    assert!(!c.enable_ipv4);
    assert_eq!(c.ipv6_subnet_len, 122);
}

#[test]
fn host_bits_are_masked_and_small_networks_split_in_four() {
    let c = checked(r#"{"Network":"10.5.1.7/16"}"#).unwrap();
    assert_eq!(c.network.to_string(), "10.5.0.0/16");
    let c = checked(r#"{"Network":"10.5.0.0/26"}"#).unwrap();
    assert_eq!(c.subnet_len, 28);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 0, 16));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 0, 48));
    let c = checked(r#"{"Network":"10.5.0.0/22"}"#).unwrap();
    assert_eq!(c.subnet_len, 24);
}

#[test]
fn keys_are_case_insensitive_later_key_wins_unknown_ignored() {
    let c = checked(r#"{"NETWORK":"10.1.0.0/16","subnetlen":26,"network":"10.2.0.0/16","Whatever":{"x":1},"backend":{"type":"VXLAN","vni":4}}"#).unwrap();
    assert_eq!(c.network.to_string(), "10.2.0.0/16");
    assert_eq!(c.subnet_len, 26);
    assert_eq!(c.backend_type, "VXLAN");
    assert_eq!(c.backend_kind(), Some(crate::BackendKind::Vxlan));
    assert_eq!(c.backend.as_ref().unwrap()["vni"], 4, "Backend kept raw");
}

#[test]
fn every_upstream_validation_message() {
    let cases = [
        (r#"{}"#, "please define a correct Network parameter in the flannel config"),
        (r#"{"Network":"0.0.0.0/0"}"#, "please define a correct Network parameter in the flannel config"),
        (r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#, "SubnetLen must be less than /31"),
        (r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#, "network must be able to accommodate at least four subnets"),
        (r#"{"Network":"10.0.0.0/29"}"#, "network is too small. Minimum useful network prefix is /28"),
        (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#, "SubnetMin is not in the range of the Network"),
        (r#"{"Network":"10.0.0.0/16","SubnetMax":"10.1.0.0"}"#, "SubnetMax is not in the range of the Network"),
        (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.1"}"#, "SubnetMin is not on a SubnetLen boundary: 10.0.1.1"),
        (r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.9.7"}"#, "SubnetMax is not on a SubnetLen boundary: 10.0.9.7"),
        // flanneld-rs: upstream says "out of subnets" for ever instead
        (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.200.0","SubnetMax":"10.0.10.0"}"#, "SubnetMin (10.0.200.0) is greater than SubnetMax (10.0.10.0): no subnet fits between them"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#, "please define a correct IPv6Network parameter in the flannel config"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#, "SubnetLen must be less than /127"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49}"#, "network must be able to accommodate at least four subnets"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/125"}"#, "IPv6Network is too small. Minimum useful network prefix is /124"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}"#, "IPv6SubnetMin is not in the range of the IPv6Network"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc01::"}"#, "IPv6SubnetMax is not in the range of the IPv6Network"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::1"}"#, "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:2::1"}"#, "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:2::1"),
        (r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#, "error decoding Backend property of config: json: cannot unmarshal string into Go value of type struct { Type string }"),
        (r#"{"Network":"10.0.0.0/16","Backend":{"Type":5}}"#, "error decoding Backend property of config: json: cannot unmarshal number into Go struct field .Type of type string"),
    ];
    for (json, want) in cases {
        assert_eq!(err(json), want, "for {json}");
    }
}

#[test]
fn parse_errors_name_the_problem() {
    assert!(err("not json").contains("expected"));
    assert_eq!(
        err("[]"),
        "json: cannot unmarshal array into Go value of type subnet.Config"
    );
    assert_eq!(
        err(r#"{"Network":"nope"}"#),
        "Network: invalid CIDR address: nope"
    );
    assert_eq!(
        err(r#"{"Network":"fc00::/16"}"#),
        "Network: invalid IPv4 CIDR format"
    );
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/33"}"#),
        "Network: invalid CIDR address: 10.0.0.0/33"
    );
    assert_eq!(
        err(r#"{"IPv6Network":"10.0.0.0/8"}"#),
        "IPv6Network: invalid IPv6 CIDR format"
    );
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/16","SubnetMin":"x"}"#),
        "SubnetMin: Invalid IP address format: \"x\""
    );
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/16","EnableIPv4":"yes"}"#),
        "json: cannot unmarshal string into Go struct field Config.EnableIPv4 of type bool"
    );
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#),
        "json: cannot unmarshal number into Go struct field Config.SubnetLen of type uint"
    );
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/16","SubnetLen":99999999999}"#),
        "SubnetLen must be less than /31"
    );
}

#[test]
fn backend_type_rules() {
    assert_eq!(
        NetworkConfig::parse(r#"{"Network":"10.0.0.0/16"}"#)
            .unwrap()
            .backend_type,
        "udp"
    );
    assert_eq!(
        NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":null}"#)
            .unwrap()
            .backend_type,
        ""
    );
    assert_eq!(
        NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":{}}"#)
            .unwrap()
            .backend_type,
        ""
    );
    assert_eq!(
        NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}"#)
            .unwrap()
            .backend_type,
        "host-gw"
    );
}

#[test]
fn compatibility_of_lease_subnets() {
    let c = checked(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0"}"#)
        .unwrap();
    assert!(c.is_compatible("10.5.10.0/24".parse().unwrap()));
    assert!(c.is_compatible("10.5.20.0/24".parse().unwrap()));
    assert!(!c.is_compatible("10.5.21.0/24".parse().unwrap()));
    assert!(!c.is_compatible("10.5.9.0/24".parse().unwrap()));
    assert!(!c.is_compatible("10.5.12.0/25".parse().unwrap()));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(mut c) = NetworkConfig::parse(&String::from_utf8_lossy(&bytes)) {
            let _ = c.check();
        }
    }

    #[test]
    fn random_configs_never_panic_and_valid_ones_are_coherent(
        ip in any::<u32>(), prefix in 0u32..=40, len in proptest::option::of(0u32..=40),
        min in proptest::option::of(any::<u32>()), max in proptest::option::of(any::<u32>()),
        ip6 in any::<u128>(), prefix6 in 0u32..=130, len6 in proptest::option::of(0u32..=130), v6 in any::<bool>(),
    ) {
        let mut json = format!(r#"{{"Network":"{}/{prefix}""#, Ipv4Addr::from(ip));
        if let Some(l) = len { json += &format!(r#","SubnetLen":{l}"#); }
        if let Some(m) = min { json += &format!(r#","SubnetMin":"{}""#, Ipv4Addr::from(m)); }
        if let Some(m) = max { json += &format!(r#","SubnetMax":"{}""#, Ipv4Addr::from(m)); }
        if v6 { json += &format!(r#","EnableIPv6":true,"IPv6Network":"{}/{prefix6}""#, Ipv6Addr::from(ip6)); }
        if let Some(l) = len6 { json += &format!(r#","IPv6SubnetLen":{l}"#); }
        json += "}";
        if let Ok(c) = NetworkConfig::from_etcd(&json) {
            prop_assert!(c.subnet_len <= 30 && c.subnet_len >= u32::from(c.network.prefix()) + 2);
            prop_assert!(c.network.contains(c.subnet_min) && c.network.contains(c.subnet_max));
            prop_assert!(c.subnet_min <= c.subnet_max);
        }
    }
}

/// A family that is off, or a range that is not set (kube mode), is left out: never zeros.
#[test]
fn the_one_line_form_prints_what_applies() {
    let v4 = checked(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(
        v4.to_string(),
        "Network=10.5.0.0/16 SubnetLen=24 SubnetMin=10.5.1.0 SubnetMax=10.5.255.0 Backend=vxlan"
    );
    let v6 = checked(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:300::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let text = v6.to_string();
    assert!(
        text.starts_with("Backend=vxlan IPv6Network=fd00:300::/56 IPv6SubnetLen=64"),
        "{text}"
    );
    assert!(
        !text.contains("0.0.0.0") && !text.contains("SubnetLen=0"),
        "{text}"
    );
    // kube mode reads the config without the etcd checks: no ranges
    let kube =
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(kube.to_string(), "Network=10.244.0.0/16 Backend=vxlan");
}

/// What a daemon records of its running config reads back as the same config.
#[test]
fn the_json_form_reads_back_to_the_same_config() {
    for json in [
        r#"{"Network":"10.5.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan","VNI":7,"Port":4789}}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:300::/56","Backend":{"Type":"host-gw"}}"#,
        r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:300::/56","EnableNFTables":true}"#,
    ] {
        let c = checked(json).unwrap();
        assert_eq!(NetworkConfig::parse(&c.to_json()).unwrap(), c, "{json}");
    }
    let kube =
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(NetworkConfig::parse(&kube.to_json()).unwrap(), kube);
}
