use super::*;

const SECRET: &str = "a-local-test-secret-of-32-bytes!";

fn authenticator() -> Authenticator {
    Authenticator::from_args(&AuthArgs {
        hs256_secret: Some(SECRET.to_owned()),
        leeway_seconds: 0,
        ..AuthArgs::default()
    })
    .unwrap()
}

#[test]
fn a_minted_token_verifies() {
    let token = mint_hs256(SECRET, "acme", "jo@acme", &["uts.usages.write"], 60).unwrap();
    let principal = authenticator().verify(&token).unwrap();
    assert_eq!(principal.tenant, "acme");
    assert_eq!(principal.user, "jo@acme");
    assert!(principal.has_scope(Scope::UsagesWrite));
    assert!(!principal.has_scope(Scope::UsagesRead));
    assert!(principal.require(Scope::Admin).is_err());
}

#[test]
fn super_user_scope_grants_everything() {
    let token = mint_hs256(SECRET, "acme", "", &["uts.su"], 60).unwrap();
    let principal = authenticator().verify(&token).unwrap();
    assert!(principal.has_scope(Scope::Admin) && principal.has_scope(Scope::AggregatesRead));
}

#[test]
fn expired_forged_and_garbage_tokens_are_refused() {
    let auth = authenticator();
    let expired = mint_hs256(SECRET, "acme", "", &["uts.su"], -120).unwrap();
    assert_eq!(auth.verify(&expired).unwrap_err().message, "the bearer token has expired");
    let forged = mint_hs256("another-secret-of-enough-length", "acme", "", &["uts.su"], 60).unwrap();
    assert_eq!(auth.verify(&forged).unwrap_err().message, "the bearer token's signature is invalid");
    assert_eq!(auth.verify("not.a.jwt").unwrap_err().code, "unauthorized");
}

#[test]
fn a_signed_token_naming_a_tenant_or_user_with_a_control_character_is_refused() {
    let auth = authenticator();
    for (tenant, user) in [("ac\0me", ""), ("acme\n", "svc"), ("acme", "s\u{7f}vc")] {
        let token = mint_hs256(SECRET, tenant, user, &["uts.usages.read"], 60).unwrap();
        let err = auth.verify(&token).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (401, "unauthorized"), "{tenant:?} {user:?}");
    }
}

/// `iss` and `aud` are required and must match when configured, ignored otherwise; `nbf`
/// is checked whenever present (README's settings, the module's header).
#[test]
fn issuer_audience_and_not_before_are_checked_as_documented() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let signed = |claims: &serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap()
    };
    let claims = |changes: &[(&str, serde_json::Value)]| {
        let mut claims = serde_json::json!({"ten": "acme", "scope": "uts.usages.read", "sub": "svc",
            "exp": now + 60, "iss": "https://idp.example", "aud": "uts"});
        for (name, value) in changes {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(*name);
            } else {
                claims[*name] = value.clone();
            }
        }
        signed(&claims)
    };
    let configured = Authenticator::from_args(&AuthArgs {
        hs256_secret: Some(SECRET.to_owned()),
        issuer: Some("https://idp.example".to_owned()),
        audience: Some("uts".to_owned()),
        leeway_seconds: 0,
        ..AuthArgs::default()
    })
    .unwrap();
    let refusal = |auth: &Authenticator, token: String| {
        let err = auth.verify(&token).expect_err("refused");
        assert_eq!((err.status.as_u16(), err.code), (401, "unauthorized"));
        err.message
    };
    use serde_json::json;
    assert_eq!(configured.verify(&claims(&[])).unwrap().tenant, "acme");
    assert!(configured.verify(&claims(&[("aud", json!(["other", "uts"]))])).is_ok());
    assert!(configured.verify(&claims(&[("nbf", json!(now - 10))])).is_ok());
    let cases = [
        (vec![("iss", json!("https://evil.example"))], "the bearer token has the wrong issuer"),
        (vec![("iss", json!(null))], "the bearer token lacks the iss claim"),
        (vec![("aud", json!("other"))], "the bearer token has the wrong audience"),
        (vec![("aud", json!(null))], "the bearer token lacks the aud claim"),
        (vec![("nbf", json!(now + 120))], "the bearer token is not valid yet"),
        (vec![("exp", json!(null))], "the bearer token lacks the exp claim"),
    ];
    for (changes, message) in &cases {
        let answer = configured.verify(&claims(changes)).map_err(|err| err.message);
        assert_eq!(answer.err().as_deref(), Some(*message), "{changes:?}");
    }
    // Not configured: any issuer and audience (or none) pass; nbf is still checked.
    let open = authenticator();
    for changes in [vec![("iss", json!("https://any.example")), ("aud", json!("any"))], vec![("iss", json!(null))]] {
        assert!(open.verify(&claims(&changes)).is_ok(), "{changes:?}");
    }
    assert_eq!(refusal(&open, claims(&[("nbf", json!(now + 120))])), "the bearer token is not valid yet");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn sign(algorithm: Algorithm, key: EncodingKey, kid: Option<&str>) -> String {
    let claims = Claims {
        ten: Some("acme".into()),
        scope: Some(ScopeClaim::Text("uts.usages.read".into())),
        user_name: None,
        sub: Some("svc".into()),
        exp: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 60,
        iat: None,
        iss: None,
        client_id: None,
        jti: None,
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[test]
fn rsa_and_ec_public_keys_from_pem_verify_their_tokens() {
    let auth = Authenticator::from_args(&AuthArgs {
        public_key_files: vec![fixture("rsa-public.pem"), fixture("ec-public.pem")],
        ..AuthArgs::default()
    })
    .unwrap();
    let rsa = EncodingKey::from_rsa_pem(&fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    for token in [sign(Algorithm::RS256, rsa, None), sign(Algorithm::ES256, ec, None)] {
        let principal = auth.verify(&token).unwrap();
        assert_eq!((principal.tenant.as_str(), principal.user.as_str()), ("acme", "svc"));
    }
    // An HS256 token is refused when no shared secret is configured (no algorithm confusion).
    let hs = mint_hs256(SECRET, "acme", "", &["uts.su"], 60).unwrap();
    assert_eq!(auth.verify(&hs).unwrap_err().code, "unauthorized");
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let auth =
        Authenticator::from_args(&AuthArgs { jwks_file: Some(fixture("jwks.json")), ..AuthArgs::default() }).unwrap();
    let key = || EncodingKey::from_rsa_pem(&fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    assert!(auth.verify(&sign(Algorithm::RS256, key(), Some("test-rsa-1"))).is_ok());
    assert!(auth.verify(&sign(Algorithm::RS256, key(), Some("another-key"))).is_err());
}

/// Serves `body` (changeable) as a JWK set on 127.0.0.1; its URL.
async fn jwks_server(body: Arc<RwLock<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let body = body.read().unwrap().clone();
            async move { body }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks")
}

#[tokio::test]
async fn keys_of_a_jwks_url_verify_and_a_new_kid_is_fetched_when_first_seen() {
    let fixture_set = fs::read_to_string(fixture("jwks.json")).unwrap();
    let body = Arc::new(RwLock::new(fixture_set.clone()));
    let url = jwks_server(body.clone()).await;
    let remote = RemoteJwks::load(&url, Duration::ZERO).await.unwrap();
    let auth = Authenticator { remote: Some(remote), ..Authenticator::from_args(&AuthArgs::default()).unwrap() };
    let key = || EncodingKey::from_rsa_pem(&fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let bearer = |token: String| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    };
    assert!(auth.authenticate(&bearer(sign(Algorithm::RS256, key(), Some("test-rsa-1")))).await.is_ok());
    let rotated = sign(Algorithm::RS256, key(), Some("test-rsa-2"));
    assert!(auth.authenticate(&bearer(rotated.clone())).await.is_err(), "a kid the provider does not publish");
    // The provider publishes the new kid: the next token naming it makes the verifier look again.
    *body.write().unwrap() = fixture_set.replace("test-rsa-1", "test-rsa-2");
    assert!(auth.authenticate(&bearer(rotated)).await.is_ok());
    // A provider that cannot be read at start is an error, not a silent start without keys.
    *body.write().unwrap() = "not json".into();
    assert!(RemoteJwks::load(&url, Duration::ZERO).await.is_err());
}

#[test]
fn space_separated_scopes_are_understood() {
    let claims = ScopeClaim::Text("uts.usages.read uts.admin".into()).into_vec();
    assert_eq!(claims, vec!["uts.usages.read", "uts.admin"]);
}
