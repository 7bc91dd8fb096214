//! The reference server's command line, parsed in-process and run as a
//! process: defaults, syntax, exit status 2, `--help`, the first line.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

mod e2e_support;

use e2e_support::*;

// ---------------------------------------------------------------------------
// Flags, without a process
// ---------------------------------------------------------------------------

#[test]
fn no_flags_give_the_documented_defaults() {
    let config = parsed_config(&[]);
    assert_eq!(config.addr, "127.0.0.1:3000".parse::<SocketAddr>().unwrap());
    assert_eq!(config.session_duration, 24 * HOUR);
    assert_eq!(config.refresh_threshold, 4 * HOUR);
    assert_eq!(config.absolute_lifetime, Some(30 * DAY));
    assert_eq!(
        config.store,
        StoreUrl::Sqlite("sqlite://widget.db".to_owned())
    );
    assert_eq!(config.session_store, None);
    assert_eq!(config.redis_prefix, "tsg:");
    assert_eq!(config.webhook_secret, None);
    assert!(config.stripe_webhook_secrets.is_empty());
    assert!(config.cors_origins.is_empty(), "any origin by default");
    assert_eq!(
        (config.rate_burst.get(), config.rate_per_second.get()),
        (100, 10)
    );
    assert_eq!(
        (
            config.max_connections,
            config.header_timeout,
            config.request_timeout
        ),
        (1024, 10 * SECOND, 30 * SECOND)
    );
}

#[test]
fn cors_origin_repeats_and_star_allows_any() {
    let config = parsed_config(&[
        "--cors-origin",
        "https://shop.example",
        "--cors-origin=http://localhost:8080",
    ]);
    assert_eq!(
        config.cors_origins,
        ["https://shop.example", "http://localhost:8080"]
    );
    let config = parsed_config(&[
        "--cors-origin",
        "https://shop.example",
        "--cors-origin",
        "*",
    ]);
    assert!(config.cors_origins.is_empty());
}

#[test]
fn flags_are_accepted_as_separate_or_inline_values() {
    let config = parsed_config(&[
        "--addr=127.0.0.1:0",
        "--session-duration",
        "10s",
        "--refresh-threshold=5s",
        "--absolute-lifetime",
        "off",
        "--store=memory",
        "--session-store",
        "memory",
        "--redis-prefix",
        "widgets:",
    ]);
    assert_eq!(config.addr, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
    assert_eq!(config.session_duration, 10 * SECOND);
    assert_eq!(config.refresh_threshold, 5 * SECOND);
    assert_eq!(config.absolute_lifetime, None);
    assert_eq!(config.session_store, Some(StoreUrl::Memory));
    assert_eq!(config.redis_prefix, "widgets:");

    let with_spaces = parsed_config(&["--absolute-lifetime=2h 30m"]);
    assert_eq!(
        with_spaces.absolute_lifetime,
        Some(2 * HOUR + 30 * 60 * SECOND)
    );
}

#[test]
fn webhook_secret_flag_is_kept_as_given_and_never_printed() {
    for args in [
        &["--webhook-secret", "whsec_Top Secret"][..],
        &["--webhook-secret=whsec_Top Secret"][..],
    ] {
        let config = parsed_config(args);
        let secret = config.webhook_secret.as_ref().expect("a secret");
        assert_eq!(secret.expose(), "whsec_Top Secret", "{args:?}");
        let printed = format!("{config:?}");
        assert!(!printed.contains("Top Secret"), "{printed}");
    }
    // A secret that starts with `--` needs the inline form.
    let config = parsed_config(&["--webhook-secret=--dashes"]);
    assert_eq!(config.webhook_secret.unwrap().expose(), "--dashes");
}

#[test]
fn stripe_webhook_secret_repeats_for_rotation_in_order_and_is_never_printed() {
    let config = parsed_config(&[
        "--stripe-webhook-secret",
        "whsec_Old Secret",
        "--stripe-webhook-secret=whsec_New Secret",
    ]);
    let secrets: Vec<&str> = config
        .stripe_webhook_secrets
        .iter()
        .map(|secret| secret.expose())
        .collect();
    assert_eq!(secrets, ["whsec_Old Secret", "whsec_New Secret"]);
    let printed = format!("{config:?}");
    assert!(!printed.contains("whsec_"), "{printed}");
    // Independent of the simplified webhook's secret.
    assert_eq!(config.webhook_secret, None);
}

#[test]
fn help_flag_asks_for_usage_wherever_it_is() {
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["--session-duration", "10s", "--help"],
    ] {
        let parsed = parse_args(args.iter().map(|arg| (*arg).to_owned()));
        assert_eq!(parsed, Ok(ParsedArgs::Help), "{args:?}");
    }
}

#[test]
fn malformed_command_lines_are_errors_naming_the_problem() {
    let cases: [(&[&str], &str); 26] = [
        (&["--max-connections", "0"], "--max-connections"),
        (
            &["--header-timeout", "0s"],
            "--header-timeout must be longer than zero",
        ),
        (&["--request-timeout", "soon"], "--request-timeout"),
        (&["--rate-burst", "0"], "--rate-burst"),
        (&["--rate-burst=-3"], "--rate-burst"),
        (&["--rate-per-second", "ten"], "--rate-per-second"),
        (&["--cors-origin", "shop.example"], "--cors-origin"),
        (
            &["--cors-origin", "https://shop.example/widget"],
            "--cors-origin",
        ),
        (&["--cors-origin", "ftp://shop.example"], "--cors-origin"),
        (&["--verbose"], "--verbose"),
        (
            &["--stripe-webhook-secret"],
            "--stripe-webhook-secret needs a value",
        ),
        (
            &["--stripe-webhook-secret= "],
            "--stripe-webhook-secret must not be empty",
        ),
        (&["--webhook-secret"], "--webhook-secret needs a value"),
        (&["--webhook-secret="], "--webhook-secret must not be empty"),
        (
            &["--webhook-secret", "  "],
            "--webhook-secret must not be empty",
        ),
        (&["--addr"], "--addr needs a value"),
        (&["--addr", "--store", "memory"], "--addr needs a value"),
        (&["--addr", "localhost"], "--addr"),
        (&["--session-duration", "soon"], "--session-duration"),
        (&["--refresh-threshold=5"], "--refresh-threshold"),
        (&["--absolute-lifetime", "forever"], "--absolute-lifetime"),
        (&["serve"], "serve"),
        (&["--store", "mysql://db"], "--store"),
        (&["--store", "redis://cache"], "--session-store"),
        (&["--redis-prefix="], "--redis-prefix"),
        (&["--redis-prefix", "my prefix"], "--redis-prefix"),
    ];
    for (args, expected) in cases {
        match parse_args(args.iter().map(|arg| (*arg).to_owned())) {
            Err(message) => assert!(
                message.contains(expected),
                "{args:?}: {message:?} should mention {expected:?}"
            ),
            Ok(parsed) => panic!("{args:?} should be an error, got {parsed:?}"),
        }
    }
}

#[tokio::test]
async fn build_app_rejects_session_settings_the_library_rejects() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--session-duration", "10s", "--refresh-threshold", "11s"],
            "refresh threshold",
        ),
        (&["--absolute-lifetime", "23h"], "absolute lifetime"),
        (&["--session-duration", "0s"], "duration"),
    ];
    for (args, expected) in cases {
        let mut config = parsed_config(args);
        config.store = StoreUrl::Memory;
        match build_app(&config, ManualClock::new(epoch())).await {
            Err(StartError::Usage(message)) => assert!(
                message.contains(expected),
                "{args:?}: {message:?} should mention {expected:?}"
            ),
            Err(other) => panic!("{args:?}: a usage error, got {other:?}"),
            Ok(_) => panic!("{args:?} should be rejected"),
        }
    }
    // The edges are allowed.
    for args in [
        &["--session-duration", "10s", "--refresh-threshold", "10s"][..],
        &["--absolute-lifetime", "24h"][..],
    ] {
        let mut config = parsed_config(args);
        config.store = StoreUrl::Memory;
        assert!(
            build_app(&config, ManualClock::new(epoch())).await.is_ok(),
            "{args:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

#[tokio::test]
async fn binary_prints_the_bound_address_first_and_serves_the_visitor_routes() {
    let (running, line) = spawn_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--session-duration=1h",
        "--refresh-threshold=10m",
    ])
    .await;
    assert!(running.addr.ip().is_loopback(), "{line}");
    assert_ne!(running.addr.port(), 0, "the real port is printed: {line}");
    assert_eq!(line, format!("listening on http://{}", running.addr));

    let api = Api::new(running.addr);
    let reply = api
        .post_json(
            "/contact-sessions",
            None,
            &visitor("Ada", "ada@example.com", "org_1"),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let lifetime = timestamp(&reply.body, "expires_at")
        .duration_since(timestamp(&reply.body, "created_at"))
        .expect("expires after creation");
    assert_eq!(lifetime, HOUR, "--session-duration=1h reached the server");
    let token = reply.body["session_id"].as_str().unwrap().to_owned();

    let reply = api.get("/contact-sessions/current", Some(&token)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["name"], "Ada");
    assert!(reply.session_expires_at().is_some(), "{reply:?}");

    // One line per request on stderr: method, path, status, latency; never
    // the token.
    let logged = |wanted: &'static str| {
        let stderr = std::sync::Arc::clone(&running.stderr);
        async move {
            for _ in 0..500 {
                if stderr.lock().expect("not poisoned").contains(wanted) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(logged("POST /contact-sessions 201 ").await);
    assert!(logged("GET /contact-sessions/current 200 ").await);
    let log = running.stderr.lock().expect("not poisoned").clone();
    assert!(!log.contains(&token), "{log}");
    let line = log
        .lines()
        .find(|line| line.starts_with("GET /contact-sessions/current 200 "))
        .expect("logged");
    assert!(line.ends_with("ms"), "{line}");

    let id = api.start_conversation(&token).await;
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = api
        .get(&format!("/conversations/{id}/messages"), Some(&token))
        .await;
    let roles: Vec<&str> = reply.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| message["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["assistant", "user"]);

    api.get("/contact-sessions/current", None)
        .await
        .assert_session_rejected("session_missing");
    api.get("/nowhere", None)
        .await
        .assert_problem(404, "not_found");
    // Started without --webhook-secret.
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let signed = signature(SECRET, &body, SystemTime::now());
    api.post_webhook(&body, Some(&signed))
        .await
        .assert_problem(503, "webhook_not_configured");
}

#[tokio::test]
async fn binary_with_a_webhook_secret_applies_signed_webhooks_to_every_route() {
    let (running, _) = spawn_binary(&["--addr", "127.0.0.1:0", "--webhook-secret", SECRET]).await;
    let api = Api::new(running.addr);
    let token = api.start_session().await;
    let id = api.start_conversation(&token).await;
    api.enhance("org_1", &id, "hi")
        .await
        .assert_problem(403, "subscription_required");

    // The binary reads the system clock: sign at the current time.
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let forged = signature("whsec_wrong", &body, SystemTime::now());
    api.post_webhook(&body, Some(&forged))
        .await
        .assert_problem(401, "invalid_signature");
    let stale = signature(SECRET, &body, SystemTime::now() - 10 * MINUTE);
    api.post_webhook(&body, Some(&stale))
        .await
        .assert_problem(401, "invalid_signature");
    api.post_webhook("{", Some(&signature(SECRET, "{", SystemTime::now())))
        .await
        .assert_problem(400, "invalid_request");
    assert_eq!(api.subscription("org_1").await["entitled"], false);

    let reply = api
        .post_webhook(&body, Some(&signature(SECRET, &body, SystemTime::now())))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        json!({ "organization_id": "org_1", "entitled": true, "applied": true })
    );
    assert_eq!(
        api.subscription("org_1").await,
        json!({ "entitled": true, "plan": "pro", "status": "active" })
    );
    assert_eq!(api.enhance("org_1", &id, "hi").await.status, 200);
    let reply = api.send_message(&token, &id, "hello").await;
    assert_eq!(reply.body["ai_replied"], true, "{reply:?}");
    api.get("/operator/files", None)
        .await
        .assert_problem(401, "organization_missing");
}

#[tokio::test]
async fn binary_exits_2_with_a_message_on_invalid_flags_before_listening() {
    let db = std::env::temp_dir().join(format!("widget-e2e-{}.db", std::process::id()));
    let sqlite = format!("sqlite://{}", db.display());
    let cases: [(&[&str], &str); 9] = [
        (&["--session-duration", "soon"], "--session-duration"),
        (
            &["--session-duration", "10s", "--refresh-threshold", "20s"],
            "refresh threshold",
        ),
        (&["--absolute-lifetime", "1h"], "absolute lifetime"),
        (&["--store", &sqlite, "--session-duration=0s"], "duration"),
        (&["--verbose"], "--verbose"),
        (&["--addr"], "--addr"),
        (&["--store", "mysql://localhost/widget"], "unknown store"),
        (&["--store", "postgres://localhost:port/widget"], "--store"),
        (
            &["--session-store", "redis://localhost:port"],
            "--session-store",
        ),
    ];
    for (flags, expected) in cases {
        // A port of its own, so a binary that wrongly starts never clashes.
        let mut args = vec!["--addr", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let (status, stdout, stderr) = run_binary(&args).await;
        assert_eq!(status, Some(2), "{args:?}: stderr {stderr:?}");
        assert!(
            stdout.is_empty(),
            "{args:?}: nothing on stdout, got {stdout:?}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr {stderr:?} should mention {expected:?}"
        );
    }
    assert!(!db.exists(), "bad flags create no database file");
}

#[tokio::test]
async fn binary_prints_usage_on_help_and_exits_0() {
    let (status, stdout, stderr) = run_binary(&["--help"]).await;
    assert_eq!(status, Some(0), "stderr {stderr:?}");
    for flag in [
        "--addr",
        "--session-duration",
        "--refresh-threshold",
        "--absolute-lifetime",
        "--store",
        "--session-store",
        "--webhook-secret",
        "--stripe-webhook-secret",
        "--cors-origin",
        "--rate-burst",
        "--rate-per-second",
        "--max-connections",
        "--header-timeout",
        "--request-timeout",
    ] {
        assert!(stdout.contains(flag), "usage mentions {flag}: {stdout}");
    }
    for route in [
        "/contact-sessions",
        "/conversations",
        "/operator/widget-settings",
        "/operator/contact-sessions",
        "/billing/webhook",
        "/billing/stripe",
    ] {
        assert!(stdout.contains(route), "usage lists {route}: {stdout}");
    }
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr:?}");
}

#[tokio::test]
async fn binary_logs_refused_webhooks_at_most_once_a_second() {
    let (running, _) = spawn_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--webhook-secret",
        SECRET,
    ])
    .await;
    let api = Api::new(running.addr);
    let body = event("org_1", "sub_1", "active", "pro").to_string();
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let reply = api.post_webhook(&body, Some("t=1,v1=00")).await;
        assert_eq!(reply.status, 401, "{reply:?}");
    }
    let elapsed = started.elapsed().as_secs();
    // The request log has a line per request; the refusal log far fewer.
    let mut requests = 0;
    for _ in 0..500 {
        requests = running
            .stderr
            .lock()
            .expect("not poisoned")
            .matches("POST /billing/webhook 401 ")
            .count();
        if requests == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(requests, 300);
    let log = running.stderr.lock().expect("not poisoned").clone();
    let refusals = log.matches("billing webhook refused").count();
    assert!(
        (1..=usize::try_from(elapsed).expect("small") + 2).contains(&refusals),
        "{refusals} refusal lines in {elapsed} s"
    );
}

#[tokio::test]
async fn a_stderr_nobody_reads_never_stalls_requests() {
    // stderr is a pipe nobody reads: it fills after about 1 500 request
    // lines, and a server writing them on its workers would stop answering.
    let mut child = Command::new(example_binary())
        .args(["--addr", "127.0.0.1:0", "--store", "memory"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the example binary starts");
    let _unread = child.stderr.take().expect("piped stderr");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    tokio::time::timeout(PROCESS_TIMEOUT, stdout.read_line(&mut line))
        .await
        .expect("the binary prints its first line in time")
        .expect("stdout is readable");
    let addr: SocketAddr = line
        .trim_end()
        .strip_prefix("listening on http://")
        .expect("the listening line")
        .parse()
        .expect("an address");
    let api = Api::new(addr);
    for round in 0..3_000 {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            api.get("/contact-sessions/current", None),
        )
        .await
        .unwrap_or_else(|_| panic!("request {round} got no answer in 10 s"));
        assert_eq!(reply.status, 401, "round {round}: {reply:?}");
    }
}
