use super::*;

#[test]
fn a_secret_matches_its_hash_only() {
    let secret = new_secret();
    assert_eq!(secret.len(), 43);
    let hash = hash_secret(&secret).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(secret_matches(&hash, &secret));
    assert!(!secret_matches(&hash, &new_secret()));
    assert!(!secret_matches(decoy_hash(), &secret));
    assert!(!secret_matches("not a hash", &secret));
}

#[test]
fn scope_lists_are_checked() {
    let list = |scopes: &[&str]| scopes.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(scopes_problem(&list(&["uts.usages.write", "uts.su"])), None);
    assert!(scopes_problem(&list(&[])).unwrap().contains("at least one"));
    assert!(scopes_problem(&list(&["uts.everything"])).unwrap().contains("not a scope"));
    assert!(scopes_problem(&list(&["uts.admin", "uts.admin"])).unwrap().contains("twice"));
}

#[test]
fn the_kid_is_the_rfc7638_thumbprint() {
    // RFC 7638 §3.1's example key and thumbprint.
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    assert_eq!(thumbprint(n, "AQAB"), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

#[test]
fn a_generated_key_signs_tokens_its_public_half_verifies() {
    let key = generate_key().unwrap();
    assert_eq!(key.e, "AQAB");
    assert_eq!(key.kid, thumbprint(&key.n, &key.e));
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({"exp": 4_000_000_000u64}),
        &encoding,
    )
    .unwrap();
    for decoding in [
        jsonwebtoken::DecodingKey::from_rsa_pem(key.public_pem.as_bytes()).unwrap(),
        jsonwebtoken::DecodingKey::from_rsa_components(&key.n, &key.e).unwrap(),
    ] {
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
    }
}
