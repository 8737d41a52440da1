//! Every built-in rule fires on a realistic sample, and its look-alike does not.

use gantry_secrets::Scanner;

use crate::{ALNUM, HEX, URL, fake};

/// (rule, a line with a credential, a line that only looks like one).
fn samples() -> Vec<(&'static str, String, String)> {
    let b32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digits = "0123456789";
    let letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let age = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L";
    let body = (0..12)
        .map(|i| fake(b64, 64, 900 + i))
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        (
            "aws-access-key-id",
            format!("AWS_ACCESS_KEY_ID=AKIA{}", fake(b32, 16, 1)),
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE".into(),
        ),
        (
            "aws-secret-access-key",
            format!("aws_secret_access_key = {}", fake(b64, 40, 2)),
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        ),
        (
            "gcp-service-account-key-id",
            format!(r#""private_key_id": "{}","#, fake(HEX, 40, 3)),
            r#""private_key_id": "","#.into(),
        ),
        (
            "azure-storage-key",
            format!("AccountName=acme;AccountKey={}==;", fake(b64, 86, 4)),
            "AccountName=acme;AccountKey=<key>;".into(),
        ),
        (
            "azure-sas-token",
            format!("?sv=2022-11-02&sp=r&sig={}%3D", fake(ALNUM, 43, 5)),
            "?sv=2022-11-02&sp=r&sig=abc".into(),
        ),
        (
            "digitalocean-token",
            format!("dop_v1_{}", fake(HEX, 64, 6)),
            format!("dop_v1_{}", fake(HEX, 12, 6)),
        ),
        (
            "databricks-token",
            format!("token = dapi{}", fake(HEX, 32, 7)),
            "see the dapi docs: dapi_token_here".into(),
        ),
        (
            "vault-token",
            format!("VAULT_TOKEN=hvs.{}", fake(URL, 91, 8)),
            "VAULT_TOKEN=hvs.xxxxx".into(),
        ),
        (
            "terraform-cloud-token",
            format!(
                "token = \"{}.atlasv1.{}\"",
                fake(ALNUM, 14, 9),
                fake(URL, 67, 9)
            ),
            "see .atlasv1. tokens".into(),
        ),
        (
            "github-token",
            format!("GH_TOKEN=ghp_{}", fake(ALNUM, 36, 10)),
            "GH_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".into(),
        ),
        (
            "github-fine-grained-token",
            format!("github_pat_{}_{}", fake(ALNUM, 22, 11), fake(ALNUM, 59, 11)),
            "github_pat_ prefix".into(),
        ),
        (
            "gitlab-token",
            format!("private_token: glpat-{}", fake(URL, 20, 12)),
            "private_token: glpat-".into(),
        ),
        (
            "npm-token",
            format!(
                "//registry.npmjs.org/:_authToken=npm_{}",
                fake(ALNUM, 36, 13)
            ),
            "npm_config_cache=/tmp/npm_cache_dir_for_the_ci".into(),
        ),
        (
            "pypi-token",
            format!("password = pypi-AgEIcHlwaS5vcmc{}", fake(URL, 100, 14)),
            "password = pypi-token".into(),
        ),
        (
            "dockerhub-token",
            format!("echo dckr_pat_{} | docker login", fake(URL, 27, 15)),
            "echo $DOCKER_PAT | docker login".into(),
        ),
        (
            "atlassian-token",
            format!("ATATT3{}", fake(URL, 180, 16)),
            "ATATT3 is the prefix".into(),
        ),
        (
            "postman-token",
            format!("PMAK-{}-{}", fake(HEX, 24, 17), fake(HEX, 34, 17)),
            "PMAK-1234".into(),
        ),
        (
            "linear-token",
            format!("lin_api_{}", fake(ALNUM, 40, 18)),
            "lin_api_key_name".into(),
        ),
        (
            "shopify-token",
            format!("shpat_{}", fake(HEX, 32, 19)),
            "shpat_ prefix".into(),
        ),
        (
            "age-secret-key",
            format!("AGE-SECRET-KEY-1{}", fake(age, 58, 20)),
            "AGE-SECRET-KEY-1...".into(),
        ),
        (
            "slack-token",
            format!(
                "xoxb-{}-{}-{}",
                fake(digits, 12, 21),
                fake(digits, 13, 21),
                fake(ALNUM, 24, 21)
            ),
            "xoxb-your-token".into(),
        ),
        (
            "slack-webhook",
            format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                fake(b32, 8, 22),
                fake(b32, 10, 22),
                fake(ALNUM, 24, 22)
            ),
            "https://hooks.slack.com/services/".into(),
        ),
        (
            "discord-webhook",
            format!(
                "https://discord.com/api/webhooks/{}/{}",
                fake(digits, 19, 23),
                fake(URL, 68, 23)
            ),
            "https://discord.com/api/webhooks/".into(),
        ),
        (
            "discord-bot-token",
            format!(
                "bot.run(\"MT{}.{}.{}\")",
                fake(ALNUM, 24, 24),
                fake(URL, 6, 24),
                fake(URL, 38, 24)
            ),
            "bot.run(token)".into(),
        ),
        (
            "telegram-bot-token",
            format!("TELEGRAM={}:AA{}", fake(digits, 10, 25), fake(URL, 33, 25)),
            "ratio=1234567890:AAB".into(),
        ),
        (
            "sendgrid-token",
            format!("SG.{}.{}", fake(URL, 22, 26), fake(URL, 43, 26)),
            "SG.example".into(),
        ),
        (
            "mailchimp-key",
            format!("apiKey: '{}-us14'", fake(HEX, 32, 27)),
            "locale: 'en-us'".into(),
        ),
        (
            "mailgun-key",
            format!("key-{}", fake(HEX, 32, 28)),
            "primary-key-column".into(),
        ),
        (
            "twilio-api-key",
            format!("SK{}", fake(HEX, 32, 29)),
            "SKU12345".into(),
        ),
        (
            "stripe-secret-key",
            format!("Stripe.api_key = 'sk_live_{}'", fake(ALNUM, 24, 30)),
            "Stripe.api_key = 'sk_test_4eC39HqLyjWDarjtT1zdp7dc'".into(),
        ),
        (
            "square-token",
            format!("sq0atp-{}", fake(URL, 22, 31)),
            "sq0atp-".into(),
        ),
        (
            "braintree-access-token",
            format!(
                "access_token$production${}${}",
                fake("abcdefghijklmnopqrstuvwxyz0123456789", 16, 32),
                fake(HEX, 32, 32)
            ),
            "access_token$production$".into(),
        ),
        (
            "anthropic-api-key",
            format!("ANTHROPIC_API_KEY=sk-ant-api03-{}AA", fake(URL, 93, 33)),
            "ANTHROPIC_API_KEY=sk-ant-api03-...".into(),
        ),
        (
            "openai-api-key",
            format!("sk-proj-{}T3BlbkFJ{}", fake(URL, 74, 34), fake(URL, 74, 34)),
            "sk-proj-xxxxxxxx".into(),
        ),
        (
            "openrouter-api-key",
            format!("sk-or-v1-{}", fake(HEX, 64, 35)),
            "sk-or-v1-".into(),
        ),
        (
            "google-api-key",
            format!("key=AIza{}&callback=x", fake(URL, 35, 36)),
            "key=AIza&callback=x".into(),
        ),
        (
            "google-oauth-secret",
            format!("\"client_secret\": \"GOCSPX-{}\"", fake(URL, 28, 37)),
            "\"client_secret\": \"GOCSPX-<secret>\"".into(),
        ),
        (
            "huggingface-token",
            format!("login(\"hf_{}\")", fake(letters, 34, 38)),
            "login(\"hf_hub_cache\")".into(),
        ),
        (
            "groq-api-key",
            format!("gsk_{}", fake(ALNUM, 52, 39)),
            "gsk_".into(),
        ),
        (
            "replicate-token",
            format!("r8_{}", fake(ALNUM, 37, 40)),
            "r8_short".into(),
        ),
        (
            "perplexity-api-key",
            format!("pplx-{}", fake(ALNUM, 48, 41)),
            "pplx-api".into(),
        ),
        (
            "xai-api-key",
            format!("xai-{}", fake(ALNUM, 80, 42)),
            "xai-grok".into(),
        ),
        (
            "langsmith-api-key",
            format!("lsv2_pt_{}_{}", fake(HEX, 32, 43), fake(HEX, 10, 43)),
            "lsv2_pt_".into(),
        ),
        (
            "private-key",
            format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"),
            "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----".into(),
        ),
        (
            "jwt",
            format!(
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
                fake(URL, 40, 44),
                fake(URL, 43, 44)
            ),
            "Bearer eyJhbGciOi...".into(),
        ),
        (
            "connection-string-password",
            format!("postgres://app:{}@db:5432/x", fake(ALNUM, 20, 45)),
            "postgres://user:password@localhost/db".into(),
        ),
        (
            "url-credentials",
            format!("https://deploy:{}@git.acme.io/x.git", fake(ALNUM, 20, 46)),
            "https://user:pass@example.com".into(),
        ),
        (
            "generic-secret",
            format!("webhook_secret: {}", fake(ALNUM, 32, 47)),
            "webhook_secret: ${WEBHOOK_SECRET}".into(),
        ),
        (
            "password",
            format!("PASSWORD = \"{}\"", fake(ALNUM, 14, 48)),
            "password = os.environ[\"DB_PASSWORD\"]".into(),
        ),
    ]
}

#[test]
fn every_rule_has_a_sample_that_fires_and_a_lookalike_that_does_not() {
    let scanner = Scanner::builtin();
    let samples = samples();
    for id in scanner.rule_ids() {
        assert!(
            samples.iter().any(|(r, _, _)| *r == id),
            "built-in rule {id} has no sample in this test"
        );
    }
    for (rule, positive, lookalike) in &samples {
        let found: Vec<_> = scanner.scan_text(positive);
        assert!(
            found.iter().any(|m| &*m.rule == *rule),
            "{rule} did not fire on its sample (found {found:?})"
        );
        let wrong = scanner.scan_text(lookalike);
        assert!(
            wrong.is_empty(),
            "{rule}'s look-alike {lookalike:?} fired: {wrong:?}"
        );
    }
}

#[test]
fn the_match_covers_the_value_only() {
    let scanner = Scanner::builtin();
    let token = format!("ghp_{}", fake(ALNUM, 36, 7));
    let text = format!("export GH_TOKEN=\"{token}\" # ci");
    let m = scanner.scan_text(&text);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(&text[m[0].start..m[0].end], token);
}

#[test]
fn a_specific_rule_wins_over_the_generic_one_on_the_same_value() {
    let scanner = Scanner::builtin();
    let text = format!("api_key = \"gsk_{}\"", fake(ALNUM, 52, 3));
    let rules: Vec<_> = scanner
        .scan_text(&text)
        .into_iter()
        .map(|m| m.rule)
        .collect();
    assert_eq!(rules.len(), 1);
    assert_eq!(&*rules[0], "groq-api-key");
}

#[test]
fn text_without_keywords_has_no_matches() {
    let scanner = Scanner::builtin();
    let text = "fn main() {\n    println!(\"hello, world\");\n}\n".repeat(1000);
    assert!(scanner.scan_text(&text).is_empty());
    assert!(scanner.scan_text("").is_empty());
}

#[test]
fn a_private_key_block_is_matched_whole_across_lines() {
    let scanner = Scanner::builtin();
    let body = (0..10)
        .map(|i| fake(ALNUM, 64, i))
        .collect::<Vec<_>>()
        .join("\n");
    let block =
        format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----");
    let text = format!("key:\n{block}\ndone\n");
    let m = scanner.scan_text(&text);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(&text[m[0].start..m[0].end], block);
}
