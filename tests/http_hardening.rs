//! The HTTP API against hostile and careless clients: bodies that are too big, too slow or
//! sent before reading; too many connections; malformed headers and cursors; amounts at
//! the edge of what the ledger holds. Raw sockets where a normal client would not misbehave.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use simgate_test_support::{Gateway, GatewayBuilder, Value, json, unique_key};

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_string()
}

/// Read one HTTP response from `stream`: status, headers (lower-case names), JSON body.
fn read_response(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Value) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "content-length" {
            length = v.parse().unwrap();
        }
        headers.push((k, v));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_client_that_sends_an_over_limit_body_before_reading_gets_the_problem_not_a_reset() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start();
    let body = vec![b' '; 1024 * 1024];
    for (auth, status, code) in [
        (
            format!("authorization: Bearer {}\r\n", gw.demo_key),
            413,
            "body_too_large",
        ),
        (String::new(), 401, "unauthenticated"),
    ] {
        // As Python's urllib does: the whole body is written before anything is read.
        let mut stream = TcpStream::connect(addr(&gw)).unwrap();
        let head = format!(
            "POST /v1/orders HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n\
             idempotency-key: {}\r\ncontent-length: {}\r\n\r\n",
            unique_key(),
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream
            .write_all(&body)
            .expect("the server reads what it refuses");
        let (got, _, json) = read_response(&mut stream);
        assert_eq!((got, json["code"].as_str().unwrap()), (status, code));
    }
}

#[test]
fn slow_bodies_are_cut_at_the_deadline_while_other_requests_are_served() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .config("[http]\nbody_read_timeout_ms = 1000\ndrain_timeout_ms = 300\n")
        .start();
    let slow_client = |key: Option<String>| {
        let addr = addr(&gw);
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            let auth = key
                .map(|k| format!("authorization: Bearer {k}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "POST /v1/orders HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n\
                 idempotency-key: {}\r\ncontent-length: 100\r\n\r\n",
                unique_key()
            );
            stream.write_all(head.as_bytes()).unwrap();
            // One byte every 100 ms: the 100-byte body would take 10 s.
            stream.set_nonblocking(false).unwrap();
            for _ in 0..100 {
                if stream.write_all(b" ").is_err() {
                    break;
                }
                let mut peek = [0u8; 1];
                stream
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                match stream.peek(&mut peek) {
                    Ok(n) if n > 0 => break,
                    _ => {}
                }
            }
            stream.set_read_timeout(None).unwrap();
            read_response(&mut stream)
        })
    };
    let slow: Vec<_> = (0..10)
        .map(|i| slow_client((i % 2 == 0).then(|| gw.demo_key.clone())))
        .collect();
    // Meanwhile the gateway serves everyone else.
    for _ in 0..5 {
        assert_eq!(gw.get("/v1/balance").status, 200);
    }
    for (i, client) in slow.into_iter().enumerate() {
        let (status, _, json) = client.join().unwrap();
        let expected = if i % 2 == 0 {
            (408, "body_timeout")
        } else {
            (401, "unauthenticated")
        };
        assert_eq!((status, json["code"].as_str().unwrap()), expected);
    }
}

#[test]
fn connections_over_the_cap_are_refused_and_served_again_once_others_close() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .config("[http]\nmax_connections = 4\nheader_read_timeout_ms = 60000\n")
        .start();
    // Four idle connections, each proven accepted by a request answered on it.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr(&gw)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).0, 200);
        idle.push(s);
    }
    let mut over = TcpStream::connect(addr(&gw)).unwrap();
    let (status, headers, json) = read_response(&mut over);
    assert_eq!(
        (status, json["code"].as_str()),
        (503, Some("too_many_connections"))
    );
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    drop(idle);
    let served = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        gw.try_raw("GET", "/healthz", None, &[], None, None)
            .is_ok_and(|r| r.status == 200)
    });
    assert!(served, "closed connections give their slots back");
}

#[test]
fn client_mistakes_are_4xx_with_a_stable_code() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start();
    let key = gw.demo_key.clone();
    // A plugin nobody deployed is a product that does not exist.
    let r = gw.order(&json!({"product_id": "nope:SKU-1"}));
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (404, Some("not_found"))
    );
    // A cursor that is not an id is a bad query, not a missing page.
    for path in [
        "/v1/orders?starting_after=garbage",
        "/v1/balance/transactions?starting_after=garbage",
    ] {
        let r = gw.get(path);
        assert_eq!(
            (r.status, r.json["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}"
        );
    }
    // 405 names what the path does allow (RFC 9110).
    let r = gw.call("DELETE", "/v1/orders", Some(&key), None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, GET"));
    // An Idempotency-Key that is present but not visible ASCII is malformed, not missing.
    let mut stream = TcpStream::connect(addr(&gw)).unwrap();
    let body = json!({"product_id": "sandbox:SBX-US-5GB-30D"}).to_string();
    let mut request = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nidempotency-key: ",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice("clé-ü".as_bytes());
    request.extend_from_slice(format!("\r\n\r\n{body}").as_bytes());
    stream.write_all(&request).unwrap();
    let (status, _, json) = read_response(&mut stream);
    assert_eq!(
        (status, json["code"].as_str()),
        (422, Some("invalid_field"))
    );
    assert_eq!(json["pointer"], "Idempotency-Key");
    // A currency outside ISO 4217 is refused.
    let (id, _) = gw.new_reseller(0, None);
    let r = gw.credit(&id, &json!({"amount": 100, "currency": "ZZZ"}));
    assert_eq!(
        (r.status, r.json["pointer"].as_str()),
        (422, Some("/currency"))
    );
}

#[test]
fn a_credit_that_would_overflow_the_balance_is_refused_and_the_balance_is_intact() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start();
    let (id, key) = gw.new_reseller(0, Some(i64::MAX));
    let r = gw.credit(&id, &json!({"amount": 1, "currency": "USD"}));
    assert_eq!(
        (r.status, r.json["pointer"].as_str()),
        (422, Some("/amount")),
        "{:?}",
        r.json
    );
    assert_eq!(gw.balance_of(&key), (i64::MAX, 0));
    // The gateway is still up and the balance still spends.
    let order = gw.post_idem_as(
        &key,
        "/v1/orders",
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        &unique_key(),
    );
    assert_eq!(order.json["status"], "fulfilled", "{:?}", order.json);
}

#[test]
fn a_retried_credit_is_applied_once() {
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start();
    let (id, key) = gw.new_reseller(0, None);
    let path = format!("/v1/admin/resellers/{id}/credits");
    // The harness's reseller holds a test key, which spends the test balance.
    let body = json!({"amount": 2_500, "currency": "USD", "note": "wire 42", "mode": "test"});
    let first = gw.post_idem_as(&gw.admin_key, &path, &body, "credit-wire-42");
    assert_eq!(first.status, 201, "{:?}", first.json);
    // The same request again (keys reordered, as another client library would send it).
    let reordered = json!({"mode": "test", "note": "wire 42", "currency": "USD", "amount": 2_500});
    let again = gw.post_idem_as(&gw.admin_key, &path, &reordered, "credit-wire-42");
    assert_eq!(again.status, 201, "{:?}", again.json);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(gw.balance_of(&key), (2_500, 0), "credited once");
    // The same key for another amount is refused; no key at all too.
    let other = gw.post_idem_as(
        &gw.admin_key,
        &path,
        &json!({"amount": 9_999, "currency": "USD"}),
        "credit-wire-42",
    );
    assert_eq!(other.status, 422);
    let keyless = gw.call("POST", &path, Some(&gw.admin_key), Some(&body));
    assert_eq!(
        (keyless.status, keyless.json["code"].as_str()),
        (400, Some("idempotency_key_missing"))
    );
    assert_eq!(gw.balance_of(&key), (2_500, 0));
}
