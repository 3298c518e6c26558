//! Configuration tests: defaults, validation messages, round trips, properties.

use super::*;
use proptest::prelude::*;

fn parse_norm(s: &str) -> Result<TargetConfig, ConfigError> {
    TargetConfig::from_toml_str(s)?.normalized()
}

const BASE: &str = r#"
[[listener]]
addr = "127.0.0.1:4420"
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf:a"
[[subsystem.namespace]]
kind = "ram"
size = "1MiB"
"#;

#[test]
fn sizes() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("1KiB"), Ok(1024));
    assert_eq!(parse_size("1k"), Ok(1024));
    assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("1gib"), Ok(1 << 30));
    assert_eq!(parse_size("3TiB"), Ok(3 << 40));
    assert_eq!(parse_size("1T"), Ok(1 << 40));
    assert_eq!(parse_size("1KB"), Ok(1000));
    assert_eq!(parse_size("5MB"), Ok(5_000_000));
    assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
    for bad in ["", "GiB", "1XB", "-1", "1.5GiB", "1 G B", "0x10", "99999999999999999999999"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
    assert!(parse_size("1XB").unwrap_err().to_string().contains("\"1XB\" is not a size (e.g. 4096, 4k, 512MiB"));
    assert!(parse_size("20000000TiB").is_err()); // overflow
    assert_eq!(format_size(512), "512 B");
    assert_eq!(format_size(1 << 30), "1.00 GiB");
    assert_eq!(format_size(1536 << 20), "1.50 GiB");
}

#[test]
fn embedded_default_normalizes() {
    let c = TargetConfig::embedded_default().normalized().unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].addr, "127.0.0.1:4420");
    assert_eq!(c.listeners[0].port_id, Some(1));
    assert_eq!(c.discovery.listen, vec!["127.0.0.1:8009".to_string()]);
    assert_eq!(c.discovery_port_ids(), vec![2]);
    assert_eq!(c.engine.mode, "interrupt");
    let s = &c.subsystems[0];
    assert_eq!(s.nqn, DEFAULT_SUBSYSTEM_NQN);
    assert_eq!(s.allow_any_host, Some(true));
    assert!(s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:whatever"));
    assert_eq!(s.model.as_deref(), Some("nvmf"));
    let serial = s.serial.as_deref().unwrap();
    assert!(!serial.is_empty() && serial.len() <= 20 && serial.is_ascii());
    assert_eq!(s.io_queues_max, Some(c.limits.io_queues_max));
    assert_eq!(s.queue_depth_max, Some(c.limits.queue_depth_max));
    let ns = &s.namespaces[0];
    assert_eq!(ns.kind, "ram");
    assert_eq!(ns.nsid, Some(1));
    assert_eq!(ns.size_bytes(), Some(1 << 30));
    assert_eq!(ns.block_size, Some(512));
    assert_eq!(ns.ana_group, Some(1));
    let (nguid, uuid, eui64) = ns.ids().unwrap();
    assert_ne!(nguid, [0; 16]);
    assert_eq!(uuid[6] >> 4, 8, "UUID version 8");
    assert_eq!(uuid[8] >> 6, 0b10, "RFC variant");
    assert_ne!(eui64, [0; 8]);
    assert_eq!(ns.nguid.as_ref().unwrap().len(), 32);
    assert_eq!(ns.eui64.as_ref().unwrap().len(), 16);
}

#[test]
fn defaults_are_stable_and_distinct() {
    let a = TargetConfig::embedded_default().normalized().unwrap();
    let b = TargetConfig::embedded_default().normalized().unwrap();
    assert_eq!(a, b);
    // Known value: changing the derivation would change IDs hosts already recorded.
    assert_eq!(derived_serial(DEFAULT_SUBSYSTEM_NQN), a.subsystems[0].serial.clone().unwrap());
    assert_ne!(derived_nguid("nqn.2026-11.io.nvmf:a", 1), derived_nguid("nqn.2026-11.io.nvmf:a", 2));
    assert_ne!(derived_nguid("nqn.2026-11.io.nvmf:a", 1), derived_nguid("nqn.2026-11.io.nvmf:b", 1));
    assert_ne!(derived_uuid("nqn.2026-11.io.nvmf:a", 1), derived_uuid("nqn.2026-11.io.nvmf:a", 2));
    assert_ne!(derived_eui64("nqn.2026-11.io.nvmf:a", 1), derived_eui64("nqn.2026-11.io.nvmf:a", 2));
    assert_ne!(derived_serial("nqn.2026-11.io.nvmf:a"), derived_serial("nqn.2026-11.io.nvmf:b"));
}

#[test]
fn nsid_and_port_id_filling() {
    let c = parse_norm(
        r#"
[[listener]]
addr = "127.0.0.1:4420"
port_id = 2
[[listener]]
addr = "127.0.0.1:4421"
[[listener]]
addr = "[::1]:4420"
[discovery]
listen = ["127.0.0.1:8009", "127.0.0.1:8010"]
referrals = [{ addr = "10.0.0.1:8009" }]
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf:a"
allowed_hosts = ["nqn.2026-11.io.nvmf:host1"]
[[subsystem.namespace]]
kind = "null"
size = "1TiB"
[[subsystem.namespace]]
nsid = 1
kind = "ram"
size = "4MiB"
block_size = 4096
[[subsystem.namespace]]
kind = "file"
path = "/tmp/x.img"
"#,
    )
    .unwrap();
    let ports: Vec<_> = c.listeners.iter().map(|l| l.port_id.unwrap()).collect();
    // Explicit 2; position 2 is taken so the next free id (3); position 3 is taken so 4.
    assert_eq!(ports, vec![2, 3, 4]);
    assert_eq!(c.discovery_port_ids(), vec![5, 6]);
    assert_eq!(c.discovery.referrals[0].port_id, Some(1));
    let s = &c.subsystems[0];
    let nsids: Vec<_> = s.namespaces.iter().map(|n| n.nsid.unwrap()).collect();
    assert_eq!(nsids, vec![2, 1, 3]);
    assert_eq!(s.allow_any_host, Some(false));
    assert!(s.host_allowed("nqn.2026-11.io.nvmf:host1"));
    assert!(!s.host_allowed("nqn.2026-11.io.nvmf:host2"));
    assert_eq!(s.namespaces[2].size_bytes(), None);
}

#[test]
fn explicit_ids_are_canonicalized() {
    let c = parse_norm(&BASE.replace(
        "size = \"1MiB\"",
        "size = \"1MiB\"\nnguid = \"0123456789ABCDEF0123456789ABCDEF\"\nuuid = \"F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6\"\neui64 = \"0011223344556677\"",
    ))
    .unwrap();
    let ns = &c.subsystems[0].namespaces[0];
    assert_eq!(ns.nguid.as_deref(), Some("0123456789abcdef0123456789abcdef"));
    assert_eq!(ns.uuid.as_deref(), Some("f81d4fae-7dec-11d0-a765-00a0c91e6bf6"));
    let (nguid, uuid, eui64) = ns.ids().unwrap();
    assert_eq!(nguid[0], 0x01);
    assert_eq!(uuid[0], 0xf8);
    assert_eq!(eui64, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
    assert_eq!(c.normalized().unwrap(), c);
}

/// Each bad input must fail with a message naming the key.
#[test]
fn validation_errors_name_the_key() {
    let ns2 = "[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1MiB\"\n";
    let sub = |nqn: &str, extra: &str| format!("[[subsystem]]\nnqn = \"{nqn}\"\n{extra}\n{ns2}");
    let lst = "[[listener]]\naddr = \"127.0.0.1:4420\"\n";
    let ok_sub = sub("nqn.2026-11.io.nvmf:a", "");
    let with_ns = |ns: &str| format!("{lst}{}[[subsystem.namespace]]\n{ns}\n", ok_sub);
    let too_many_hosts: Vec<String> =
        (0..=NAMESPACE_HOSTS_MAX).map(|i| format!("\"nqn.2026-11.io.test:h{i}\"")).collect();
    let too_many_hosts = too_many_hosts.join(", ");
    let cases: Vec<(String, &str)> = vec![
        // parse-level
        (format!("{lst}bogus = 1\n"), "bogus"),
        (format!("{lst}[limits]\nqueue_dept_max = 4\n"), "queue_dept_max"),
        (format!("{lst}{ok_sub}colour = \"red\"\n"), "colour"),
        (format!("{lst}[[subsystem]]\nnqn = 5\n"), "nqn"),
        ("[[listener]]\nadress = \"x\"\n".into(), "adress"),
        // listeners
        (ok_sub.clone(), "listener"),
        ("[[listener]]\naddr = \"localhost:4420\"\n".into(), "listener[0].addr"),
        ("[[listener]]\naddr = \"127.0.0.1\"\n".into(), "listener[0].addr"),
        (format!("{lst}{lst}"), "listener[1].addr"),
        (format!("{lst}[discovery]\nlisten = [\"127.0.0.1:4420\"]\n"), "discovery.listen[0]"),
        (format!("{lst}[discovery]\nlisten = [\"nope\"]\n"), "discovery.listen[0]"),
        (format!("{lst}port_id = 3\n[[listener]]\naddr = \"127.0.0.1:1\"\nport_id = 3\n"), "listener[1].port_id"),
        (
            format!("[[listener]]\naddr = \"127.0.0.1:4420\"\nsubsystems = [\"nqn.2026-11.io.nvmf:zz\"]\n{ok_sub}"),
            "listener[0].subsystems[0]",
        ),
        (format!("{lst}[[discovery.referrals]]\naddr = \"10.0.0.1:0\"\n"), "discovery.referrals[0].addr"),
        // engine / limits
        (format!("{lst}[engine]\nmode = \"busy\"\n"), "engine.mode"),
        (format!("{lst}[engine]\ncores = \"3-1\"\n"), "engine.cores"),
        (format!("{lst}[engine]\npoll_direct_recv_conns_max = 1025\n"), "engine.poll_direct_recv_conns_max"),
        (format!("{lst}[limits]\nqueue_depth_max = 1\n"), "limits.queue_depth_max"),
        (format!("{lst}[limits]\nqueue_depth_max = 5000\n"), "limits.queue_depth_max"),
        (format!("{lst}[limits]\nio_queues_max = 0\n"), "limits.io_queues_max"),
        (format!("{lst}[limits]\nin_capsule_data_bytes = 100\n"), "limits.in_capsule_data_bytes"),
        (format!("{lst}[limits]\nmdts_bytes = 12288\n"), "limits.mdts_bytes"),
        (format!("{lst}[limits]\nmdts_bytes = 16777216\n"), "limits.mdts_bytes"),
        (format!("{lst}[limits]\nmax_h2c_data_bytes = 100\n"), "limits.max_h2c_data_bytes"),
        (format!("{lst}[limits]\naer_max = 17\n"), "limits.aer_max"),
        (format!("{lst}[limits]\nkato_default_ms = 10\nkato_max_ms = 5\n"), "limits.kato_default_ms"),
        (format!("{lst}[limits]\nconnect_timeout_ms = 1\n"), "limits.connect_timeout_ms"),
        // subsystems
        (format!("{lst}{}", sub("iqn.2026-11.io.nvmf:a", "")), "subsystem[0].nqn"),
        (format!("{lst}{}", sub(nvmf_proto::DISCOVERY_NQN, "")), "subsystem[0].nqn"),
        (format!("{lst}{ok_sub}{ok_sub}"), "subsystem[1].nqn"),
        (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "serial = \"123456789012345678901\"")), "subsystem[0].serial"),
        (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "serial = \"\"")), "subsystem[0].serial"),
        (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "model = \"caf\u{e9}\"")), "subsystem[0].model"),
        (
            format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "allowed_hosts = [\"bad host\"]")),
            "subsystem[0].allowed_hosts[0]",
        ),
        (
            format!(
                "{lst}{}",
                sub("nqn.2026-11.io.nvmf:a", "allowed_hosts = [\"nqn.2026-11.x:h\", \"nqn.2026-11.x:h\"]")
            ),
            "subsystem[0].allowed_hosts[1]",
        ),
        (
            format!(
                "{lst}{}",
                sub("nqn.2026-11.io.nvmf:a", "allow_any_host = true\nallowed_hosts = [\"nqn.2026-11.x:h\"]")
            ),
            "subsystem[0].allow_any_host",
        ),
        (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "io_queues_max = 500")), "subsystem[0].io_queues_max"),
        (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "queue_depth_max = 1")), "subsystem[0].queue_depth_max"),
        // namespaces
        (with_ns("kind = \"ram\"\nsize = \"1XB\""), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"ram\""), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"ram\"\nsize = \"1000\""), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"ram\"\nsize = \"0\""), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"ram\"\nsize = \"100TiB\""), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"null\"\nsize = \"4194305T\""), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"ram\"\nsize = \"6KiB\"\nblock_size = 4096"), "subsystem[0].namespace[1].size"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nblock_size = 1024"), "subsystem[0].namespace[1].block_size"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\npath = \"/x\""), "subsystem[0].namespace[1].path"),
        (with_ns("kind = \"disk\"\nsize = \"1MiB\""), "subsystem[0].namespace[1].kind"),
        (with_ns("kind = \"file\""), "subsystem[0].namespace[1].path"),
        (with_ns("kind = \"block\""), "subsystem[0].namespace[1].path"),
        (with_ns("kind = \"block\"\npath = \"/dev/x\"\nsize = \"1GiB\""), "subsystem[0].namespace[1].size"),
        (
            with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnsid = 1").replace("\"1MiB\"\n[[", "\"1MiB\"\nnsid = 1\n[["),
            "subsystem[0].namespace[1].nsid",
        ),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnsid = 0"), "subsystem[0].namespace[1].nsid"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnsid = 4294967295"), "subsystem[0].namespace[1].nsid"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nana_group = 0"), "subsystem[0].namespace[1].ana_group"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnguid = \"12\""), "subsystem[0].namespace[1].nguid"),
        (
            with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnguid = \"00000000000000000000000000000000\""),
            "subsystem[0].namespace[1].nguid",
        ),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nuuid = \"not-a-uuid\""), "subsystem[0].namespace[1].uuid"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\neui64 = \"001122334455667g\""), "subsystem[0].namespace[1].eui64"),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nhosts = [\"bad host\"]"), "subsystem[0].namespace[1].hosts[0]"),
        (
            with_ns("kind = \"ram\"\nsize = \"1MiB\"\nhosts = [\"nqn.2026-11.x:h\", \"nqn.2026-11.x:h\"]"),
            "subsystem[0].namespace[1].hosts[1]",
        ),
        (
            with_ns(&format!("kind = \"ram\"\nsize = \"1MiB\"\nhosts = [{too_many_hosts}]")),
            "subsystem[0].namespace[1].hosts",
        ),
        (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nvisible_hosts = []"), "visible_hosts"),
    ];
    for (input, key) in cases {
        match parse_norm(&input) {
            Ok(_) => panic!("accepted bad input for {key}:\n{input}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(key), "error for {key} does not name it: {msg}\ninput:\n{input}");
            }
        }
    }
}

#[test]
fn bad_size_message_is_exact() {
    let input = format!(
        "{BASE}[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf:b\"\n[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1XB\"\n"
    );
    let e = parse_norm(&input).unwrap_err();
    assert_eq!(
        e.to_string(),
        "subsystem[1].namespace[0].size: \"1XB\" is not a size (e.g. 4096, 4k, 512MiB, 1GiB; KB/MB/GB are powers of \
         1000)"
    );
    assert_eq!(e.key(), Some("subsystem[1].namespace[0].size"));
}

#[test]
fn duplicate_explicit_ids_rejected() {
    let id = "nguid = \"0123456789abcdef0123456789abcdef\"";
    let input = format!(
        "{}{id}\n[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf:b\"\n[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1MiB\"\n{id}\n",
        BASE
    );
    let e = parse_norm(&input).unwrap_err();
    assert_eq!(e.key(), Some("subsystem[1].namespace[0].nguid"), "{e}");
}

#[test]
fn port_zero_listeners_may_repeat() {
    let c = parse_norm(&BASE.replace("4420", "0").replace(
        "[[subsystem]]",
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[discovery]\nlisten = [\"127.0.0.1:0\"]\n[[subsystem]]",
    ))
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn from_file_reads_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    std::fs::write(&p, BASE).unwrap();
    assert!(TargetConfig::from_file(&p).unwrap().normalized().is_ok());
    let missing = TargetConfig::from_file(dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    std::fs::write(&p, "bogus = 1\n").unwrap();
    let e = TargetConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("t.toml") && e.contains("bogus"), "{e}");
}

#[test]
fn round_trip_of_defaults_and_full_config() {
    for c in [TargetConfig::embedded_default(), TargetConfig::from_toml_str(BASE).unwrap()] {
        let n = c.normalized().unwrap();
        let text = n.to_toml_string().unwrap();
        let back = TargetConfig::from_toml_str(&text).unwrap();
        assert_eq!(back, n, "text:\n{text}");
        assert_eq!(back.normalized().unwrap(), n);
    }
}

#[test]
fn example_files_are_valid() {
    let examples = [
        ("target-ram.toml", include_str!("../../../../examples/target-ram.toml")),
        ("target-file.toml", include_str!("../../../../examples/target-file.toml")),
        ("target-multi.toml", include_str!("../../../../examples/target-multi.toml")),
    ];
    for (name, text) in examples {
        let c = TargetConfig::from_toml_str(text)
            .and_then(|c| c.normalized())
            .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
        let back = TargetConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(back.normalized().unwrap(), c, "examples/{name} round trip");
    }
    let multi = TargetConfig::from_toml_str(examples[2].1).unwrap().normalized().unwrap();
    assert_eq!(multi.subsystems.len(), 2);
    assert_eq!(multi.listeners.len(), 2);
    assert!(multi.subsystems.iter().any(|s| !s.allowed_hosts.is_empty()));
}

// ---- property tests ----

fn nqn_strategy() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,12}(:[a-z0-9.-]{1,12})?".prop_map(|tail| format!("nqn.2026-11.io.test:{tail}"))
}

fn namespace_strategy() -> impl Strategy<Value = NamespaceConfig> {
    (
        prop_oneof![Just("ram"), Just("null"), Just("file"), Just("block")],
        1u64..64,
        prop_oneof![Just("KiB"), Just("MiB"), Just("GiB"), Just("K"), Just("M")],
        prop_oneof![Just(None), Just(Some(512u32)), Just(Some(4096u32))],
        proptest::option::of(1u32..=ANA_GROUP_ID_MAX),
        proptest::option::of(any::<[u8; 8]>()),
        any::<bool>(),
        proptest::collection::btree_set(nqn_strategy(), 0..3),
    )
        .prop_map(|(kind, n, unit, block_size, ana_group, eui, sized_file, hosts)| {
            let mut ns = NamespaceConfig::new(kind);
            ns.block_size = block_size;
            ns.ana_group = ana_group;
            ns.hosts = hosts.into_iter().collect();
            // Multiples of 4 KiB are valid for both block sizes.
            let size = format!("{}{unit}", n * 4);
            match kind {
                "ram" | "null" => ns.size = Some(size),
                "file" => {
                    ns.path = Some(format!("/tmp/ns-{n}.img"));
                    if sized_file {
                        ns.size = Some(size);
                    }
                }
                _ => ns.path = Some(format!("/dev/test{n}")),
            }
            ns.eui64 = eui.filter(|e| *e != [0; 8]).map(|e| hex(&e));
            ns
        })
}

fn config_strategy() -> impl Strategy<Value = TargetConfig> {
    let subsystem = (
        nqn_strategy(),
        proptest::option::of("[A-Za-z0-9]([A-Za-z0-9 _-]{0,18}[A-Za-z0-9])?"),
        proptest::option::of("[A-Za-z0-9][A-Za-z0-9 ]{0,30}[A-Za-z0-9\"\\\\]"),
        proptest::collection::vec(nqn_strategy(), 0..3),
        proptest::option::of(1u32..=8),
        proptest::collection::vec(namespace_strategy(), 0..4),
    )
        .prop_map(|(nqn, serial, model, mut hosts, io_queues, namespaces)| {
            hosts.sort();
            hosts.dedup();
            let mut s = SubsystemConfig::with_namespaces(&nqn, namespaces);
            s.serial = serial;
            s.model = model;
            s.allowed_hosts = hosts;
            s.io_queues_max = io_queues;
            s
        });
    (
        proptest::collection::vec((1024u16..60000, proptest::option::of(1u16..100)), 1..4),
        proptest::collection::vec(1024u16..60000, 0..3),
        proptest::collection::vec(subsystem, 0..4),
        prop_oneof![Just("poll"), Just("interrupt")],
        prop_oneof![Just(""), Just("0"), Just("0,2-3")],
        2u32..=1024,
    )
        .prop_map(|(listen, disc, mut subsystems, mode, cores, depth)| {
            let mut seen = HashSet::new();
            subsystems.retain(|s| seen.insert(s.nqn.clone()));
            let mut c = TargetConfig::embedded_default();
            c.subsystems = subsystems;
            c.engine.mode = mode.into();
            c.engine.cores = cores.into();
            c.limits.queue_depth_max = depth;
            let mut ids = HashSet::new();
            c.listeners = listen
                .into_iter()
                .filter(|(p, _)| !disc.contains(p))
                .map(|(port, id)| ListenerConfig {
                    addr: format!("127.0.0.1:{port}"),
                    port_id: id.filter(|i| ids.insert(*i)),
                    subsystems: Vec::new(),
                    tls: Default::default(),
                })
                .collect();
            c.discovery.listen = disc.iter().map(|p| format!("127.0.0.2:{p}")).collect();
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn normalized_round_trips_through_toml(c in config_strategy()) {
        // Some generated configs are invalid (duplicate ports, empty listeners): skip those.
        if let Ok(n) = c.normalized() {
            let text = n.to_toml_string().unwrap();
            let back = TargetConfig::from_toml_str(&text).unwrap();
            prop_assert_eq!(&back, &n, "text:\n{}", text);
            prop_assert_eq!(back.normalized().unwrap(), n);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,400}") {
        if let Ok(c) = TargetConfig::from_toml_str(&s) {
            let _ = c.normalized();
        }
    }

    #[test]
    fn tomlish_strings_never_panic(
        parts in proptest::collection::vec(prop_oneof![
            Just("[[listener]]\n"), Just("addr = \"127.0.0.1:4420\"\n"), Just("addr = \"[::1]:0\"\n"),
            Just("[[subsystem]]\n"), Just("nqn = \"nqn.2026-11.io.x:y\"\n"), Just("[[subsystem.namespace]]\n"),
            Just("kind = \"ram\"\n"), Just("kind = \"file\"\n"), Just("size = \"1GiB\"\n"), Just("size = \"18446744073709551615T\"\n"),
            Just("nsid = 4294967295\n"), Just("nsid = -1\n"), Just("block_size = 4096\n"), Just("[limits]\n"),
            Just("queue_depth_max = 0\n"), Just("mdts_bytes = 4294967295\n"), Just("[discovery]\n"),
            Just("listen = [\"127.0.0.1:8009\"]\n"), Just("port_id = 65535\n"), Just("uuid = \"\"\n"),
            Just("serial = \"\u{0}\"\n"), Just("[engine]\n"), Just("cores = \"0-1023\"\n"), Just("=\n"), Just("\"\n"),
        ], 0..24)
    ) {
        let s: String = parts.concat();
        if let Ok(c) = TargetConfig::from_toml_str(&s) {
            if let Ok(n) = c.normalized() {
                let back = TargetConfig::from_toml_str(&n.to_toml_string().unwrap()).unwrap();
                prop_assert_eq!(back.normalized().unwrap(), n);
            }
        }
    }
}

#[test]
fn host_tables_allow_their_hosts_keep_secrets_as_given_and_never_print_them() {
    let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    let text = format!(
        "[[listener]]\naddr = \"127.0.0.1:4420\"\n[[subsystem]]\nnqn = \"nqn.2026-12.io.nvmf:keys\"\n\
         [[subsystem.host]]\nnqn = \"{host}\"\ndhchap_key = \"DHHC-1:00:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0:\"\n\
         dhchap_ctrl_key_file = \"/etc/nvmf/ctrl.key\"\ndhchap_hash = \"sha384\"\ndhchap_dhgroup = \"ffdhe4096\"\n\
         [[subsystem.namespace]]\nkind = \"null\"\nsize = \"1MiB\"\n"
    );
    let c = parse_norm(&text).unwrap();
    let s = &c.subsystems[0];
    assert_eq!(s.allow_any_host, Some(false), "a host table restricts the subsystem");
    assert!(s.host_allowed(host));
    assert!(!s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:99999999-2222-3333-4444-555555555555"));
    let again = TargetConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
    assert_eq!(again.subsystems[0].hosts, s.hosts, "inline stays inline, a file stays a file");
    let dbg = format!("{:?}", s.hosts[0]);
    assert!(!dbg.contains("c2Vj") && dbg.contains("<redacted>"), "{dbg}");

    for (bad, key) in [
        ("dhchap_key = \"x\"\ndhchap_key_file = \"/k\"", "dhchap_key"),
        ("dhchap_ctrl_key = \"x\"", "dhchap_ctrl_key"),
        ("dhchap_hash = \"md5\"", "dhchap_hash"),
        ("dhchap_dhgroup = \"ffdhe1024\"", "dhchap_dhgroup"),
    ] {
        let t = format!(
            "[[listener]]\naddr = \"127.0.0.1:4420\"\n[[subsystem]]\nnqn = \"nqn.2026-12.io.nvmf:keys\"\n\
             [[subsystem.host]]\nnqn = \"{host}\"\n{bad}\n"
        );
        let e = parse_norm(&t).unwrap_err();
        assert!(e.key().is_some_and(|k| k.ends_with(key)), "{bad}: {e}");
    }
}

#[test]
fn namespace_hosts_round_trip_and_stay_out_of_files_when_empty() {
    let h1 = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000a1";
    let h2 = "nqn.2026-11.io.test:h2";
    let input =
        format!("{BASE}[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1MiB\"\nhosts = [\"{h1}\", \"{h2}\"]\n");
    let c = parse_norm(&input).unwrap();
    let ns = &c.subsystems[0].namespaces;
    assert!(ns[0].hosts.is_empty());
    assert_eq!(ns[1].hosts, [h1, h2]);
    let text = c.to_toml_string().unwrap();
    assert_eq!(text.matches("\nhosts = ").count(), 1, "only the masked namespace writes hosts:\n{text}");
    assert_eq!(parse_norm(&text).unwrap(), c);
    // The bound itself is accepted.
    let hosts: Vec<String> = (0..NAMESPACE_HOSTS_MAX).map(|i| format!("\"nqn.2026-11.io.test:h{i}\"")).collect();
    let input =
        format!("{BASE}[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1MiB\"\nhosts = [{}]\n", hosts.join(","));
    assert_eq!(parse_norm(&input).unwrap().subsystems[0].namespaces[1].hosts.len(), NAMESPACE_HOSTS_MAX);
}
