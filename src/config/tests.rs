use super::*;
use crate::cluster::tls::ClientTlsFiles;
use crate::lifecycle::Rate;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn cluster_settings_are_validated_and_named() {
    let cluster = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs));
    let node = [
        ("LOGBRIDGE_CLUSTER_ROLE", "gateway, indexer"),
        ("LOGBRIDGE_CLUSTER_NODE_ID", "node-1"),
    ];
    let config = cluster(&[
        node[0],
        node[1],
        (
            "LOGBRIDGE_CLUSTER_NATS_URLS",
            r#"["nats://a:4222", "nats://b:4222"]"#,
        ),
    ])
    .unwrap()
    .cluster
    .unwrap();
    assert!(config.gateway && config.indexer);
    assert_eq!(config.node_id, "node-1");
    assert_eq!(config.nats_urls, ["nats://a:4222", "nats://b:4222"]);
    assert_eq!(
        (
            config.shards,
            config.stream_replicas,
            config.indexer_replicas
        ),
        (8, 3, 2)
    );
    assert_eq!(config.dedup_window, Duration::from_secs(600));
    let refusal = |pairs: &[(&str, &str)]| cluster(pairs).unwrap_err().to_string();
    assert_eq!(
        refusal(&[("LOGBRIDGE_CLUSTER_ROLE", "router"), node[1]]),
        "invalid setting cluster.role: unknown role \"router\": expected gateway, indexer or both, comma-separated"
    );
    assert_eq!(
        refusal(&[node[0]]),
        "invalid setting cluster.node_id: must be set in cluster mode: 1 to 64 letters, digits, '-' or '_'"
    );
    assert_eq!(
        refusal(&[node[0], node[1], ("LOGBRIDGE_CLUSTER_SHARDS", "5000")]),
        "invalid setting cluster.shards: must be between 1 and 4096"
    );
}

#[test]
fn cluster_tls_covers_every_hop_or_is_refused() {
    let cluster = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs));
    let refusal = |pairs: &[(&str, &str)]| cluster(pairs).unwrap_err().to_string();
    let listeners = [
        ("LOGBRIDGE_CLUSTER_ROLE", "gateway,indexer"),
        ("LOGBRIDGE_CLUSTER_NODE_ID", "node-1"),
        ("LOGBRIDGE_TLS_CERT_FILE", "node.pem"),
        ("LOGBRIDGE_TLS_KEY_FILE", "node.key"),
    ];
    let hops = [
        (
            "LOGBRIDGE_CLUSTER_NATS_URLS",
            r#"["tls://a:4222", "tls://b:4222"]"#,
        ),
        ("LOGBRIDGE_CLUSTER_NATS_CA_FILE", "nats-ca.pem"),
        ("LOGBRIDGE_CLUSTER_NATS_CERT_FILE", "nats-client.pem"),
        ("LOGBRIDGE_CLUSTER_NATS_KEY_FILE", "nats-client.key"),
        ("LOGBRIDGE_CLUSTER_ETCD_ENDPOINTS", r#"["https://e:2379"]"#),
        ("LOGBRIDGE_CLUSTER_ETCD_CA_FILE", "etcd-ca.pem"),
        ("LOGBRIDGE_CLUSTER_PEER_CA_FILE", "peer-ca.pem"),
    ];
    let all: Vec<_> = listeners.iter().chain(&hops).copied().collect();
    let config = cluster(&all).unwrap().cluster.unwrap();
    assert_eq!(
        config.nats_tls,
        Some(ClientTlsFiles {
            ca_file: "nats-ca.pem".into(),
            identity: Some(("nats-client.pem".into(), "nats-client.key".into())),
        })
    );
    assert_eq!(
        config.etcd_tls,
        Some(ClientTlsFiles {
            ca_file: "etcd-ca.pem".into(),
            identity: None,
        })
    );
    assert_eq!(config.peer_ca_file, Some("peer-ca.pem".into()));
    // a hop left in plaintext (its CA and TLS URLs dropped) is refused with [tls]
    for (hop, setting) in [
        ("NATS", "nats_ca_file"),
        ("ETCD", "etcd_ca_file"),
        ("PEER", "peer_ca_file"),
    ] {
        let prefix = format!("LOGBRIDGE_CLUSTER_{hop}_");
        let without: Vec<_> = all
            .iter()
            .filter(|(k, _)| !k.starts_with(&prefix))
            .copied()
            .collect();
        assert_eq!(
            refusal(&without),
            format!(
                "invalid setting cluster.{setting}: must be set when [tls] is: cluster mode then encrypts every hop"
            )
        );
    }
    let with = |pair: (&'static str, &'static str)| {
        let mut pairs: Vec<_> = all.iter().filter(|(k, _)| *k != pair.0).copied().collect();
        pairs.push(pair);
        refusal(&pairs)
    };
    assert_eq!(
        with((
            "LOGBRIDGE_CLUSTER_NATS_URLS",
            r#"["tls://a:4222", "nats://b:4222"]"#
        )),
        "invalid setting cluster.nats_urls: nats://b:4222 is not tls://: with cluster.nats_ca_file set every one is reached over TLS"
    );
    assert_eq!(
        with(("LOGBRIDGE_CLUSTER_ETCD_ENDPOINTS", r#"["http://e:2379"]"#)),
        "invalid setting cluster.etcd_endpoints: http://e:2379 is not https://: with cluster.etcd_ca_file set every one is reached over TLS"
    );
    assert_eq!(
        with(("LOGBRIDGE_CLUSTER_ADVERTISE_URL", "http://10.0.0.7:8080")),
        "invalid setting cluster.advertise_url: must start with https://, as the API listener serves it"
    );
    assert_eq!(
        with(("LOGBRIDGE_CLUSTER_NATS_KEY_FILE", "")),
        "invalid setting cluster.nats_key_file: must be set when cluster.nats_cert_file is"
    );
    // without [tls]: a TLS URL needs its CA, and indexers serve plain HTTP
    let plain = [listeners[0], listeners[1]];
    let without_listeners =
        |extra: (&'static str, &'static str)| refusal(&[plain[0], plain[1], extra]);
    assert_eq!(
        without_listeners(("LOGBRIDGE_CLUSTER_ETCD_ENDPOINTS", r#"["https://e:2379"]"#)),
        "invalid setting cluster.etcd_ca_file: must be set to reach https://e:2379 over TLS"
    );
    assert_eq!(
        without_listeners(("LOGBRIDGE_CLUSTER_PEER_CA_FILE", "peer-ca.pem")),
        "invalid setting cluster.peer_ca_file: needs [tls]: indexers serve HTTPS only with tls.cert_file and tls.key_file"
    );
    let nats_only = cluster(&[plain[0], plain[1], hops[0], hops[1]])
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(
        (
            nats_only.nats_tls.is_some(),
            nats_only.etcd_tls,
            nats_only.peer_ca_file
        ),
        (true, None, None)
    );
}

#[test]
fn documented_example_config_parses_to_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logbridge.toml");
    let config = Config::load(Some(&path), &HashMap::new()).unwrap();
    let defaults = Config::defaults();
    assert_eq!(config.otlp.grpc_listen, defaults.otlp.grpc_listen);
    assert_eq!(config.otlp.http_listen, defaults.otlp.http_listen);
    assert_eq!(config.otlp.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(config.api.listen, "127.0.0.1:8080");
    assert_eq!(config.index.path, PathBuf::from("index"));
    assert_eq!(config.index.commit_interval, Duration::from_millis(1000));
    assert_eq!(config.otlp.max_inflight_bytes, 256 * 1024 * 1024);
    assert_eq!(config.api.max_concurrent_searches, 8);
    assert_eq!(config.api.max_concurrent_searches_per_user, 4);
    assert_eq!(config.api.max_concurrent_exports, 4);
    assert_eq!(config.api.max_concurrent_exports_per_user, 2);
    assert_eq!(config.api.export_stall_timeout, Duration::from_secs(30));
    assert_eq!(config.api.tail_stall_timeout, Duration::from_secs(10));
    assert_eq!(config.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(config.server.body_read_timeout, Duration::from_secs(30));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(120));
    assert_eq!(config.server.max_connections, 1024);
    assert_eq!(config.server.max_concurrent_streams, 100);
    assert_eq!(
        config.server.http2_keepalive_interval,
        Duration::from_secs(30)
    );
    assert_eq!(
        config.server.http2_keepalive_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(config.server.drain_timeout, Duration::from_secs(10));
    assert_eq!(config.auth.keys_file, PathBuf::from("config/keys.toml"));
    assert_eq!(config.mapping, defaults.mapping);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.retention.policy, Retention::default());
    assert_eq!(config.retention.sweep_interval, Duration::from_secs(30));
    assert!(
        config.cluster.is_none(),
        "a single node unless a role is set"
    );
    assert_eq!(config.limits, LimitsConfig::default());
    assert_eq!(config.tls, None);
}

#[test]
fn lifecycle_sections_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logbridge.toml");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &HashMap::new()).map_err(|e| e.to_string())
    };
    let config = load(
        "[retention]\ndays = 30\n[retention.users]\n\"acme\" = 90\n\
         [limits]\nuser_records_per_second = 100\n\
         [limits.users]\n\"acme\" = { records_per_second = 5, burst = 10 }\n\
         [tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
    )
    .unwrap();
    assert_eq!(config.retention.policy.days_for("acme"), 90);
    assert_eq!(config.retention.policy.days_for("other"), 30);
    assert_eq!(
        config.limits.users["acme"],
        Rate {
            records_per_second: 5,
            burst: 10
        }
    );
    assert_eq!(
        config.tls,
        Some(TlsFiles {
            cert_file: PathBuf::from("c.pem"),
            key_file: PathBuf::from("k.pem"),
            client_ca_file: None,
        })
    );
    for (text, message) in [
        (
            "[tls]\ncert_file = \"c.pem\"\n",
            "invalid setting tls.key_file: must be set when tls.cert_file is",
        ),
        (
            "[tls]\nclient_ca_file = \"ca.pem\"\n",
            "invalid setting tls.client_ca_file: needs tls.cert_file and tls.key_file",
        ),
        (
            "[retention]\ndays = 40000\n",
            "invalid setting retention: days must be at most 36500 days (0 keeps logs forever)",
        ),
        (
            "[limits.users]\n\"a\" = { burst = 3 }\n",
            "missing field `records_per_second`",
        ),
    ] {
        let err = load(text).unwrap_err();
        assert!(err.ends_with(message), "{err}");
    }
}

#[test]
fn env_overrides_follow_section_and_key() {
    let config = Config::load(Some(Path::new("/nonexistent/but/unused")), &HashMap::new());
    assert!(matches!(config, Err(ConfigError::Read { .. })));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[api]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
    let config = Config::load(
        Some(&path),
        &env(&[
            ("LOGBRIDGE_OTLP_GRPC_LISTEN", "127.0.0.1:0"),
            ("LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS", "250"),
            ("LOGBRIDGE_MAPPING_ASSISTANT_ID", r#"["attr:agent.id"]"#),
            ("LOGBRIDGE_SERVER_DRAIN_TIMEOUT_MS", "2500"),
            // emit's key, not a setting
            ("LOGBRIDGE_KEY", "lb_secret"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(config.otlp.grpc_listen, "127.0.0.1:0");
    assert_eq!(config.api.listen, "0.0.0.0:9000");
    assert_eq!(config.index.commit_interval, Duration::from_millis(250));
    assert_eq!(config.server.drain_timeout, Duration::from_millis(2500));
    assert_eq!(
        config.mapping.assistant_id,
        vec![crate::mapping::Source::Attr("agent.id".to_owned())]
    );
}

#[test]
fn bad_env_override_names_the_variable() {
    let err = Config::load(
        Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logbridge.toml")),
        &env(&[("LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS", "soon")]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid environment override LOGBRIDGE_INDEX_COMMIT_INTERVAL_MS: expected a value like 1000"
    );
    let err = Config::load(
        Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/logbridge.toml")),
        &env(&[("LOGBRIDGE_API_PORT", "1")]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid environment override LOGBRIDGE_API_PORT: no such setting"
    );
}

#[test]
fn unknown_keys_and_zero_values_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[index]\npaht = \"x\"\n").unwrap();
    let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("unknown field `paht`"), "{err}");

    std::fs::write(&path, "[index]\ncommit_interval_ms = 0\n").unwrap();
    let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid setting index.commit_interval_ms: must be at least 1"
    );
    std::fs::write(&path, "[server]\nidle_timeout_ms = 99999999999\n").unwrap();
    let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid setting server.idle_timeout_ms: must be at most 86400000"
    );
    std::fs::write(&path, "[server]\ndrain_timeout_ms = 0\n").unwrap();
    let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid setting server.drain_timeout_ms: must be at least 1"
    );
    std::fs::write(&path, "[otlp]\nmax_inflight_bytes = 200000000\n").unwrap();
    let err = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid setting otlp.max_inflight_bytes: must be at least 16 times \
         otlp.max_message_bytes (268435456), so that the largest export fits"
    );
}
