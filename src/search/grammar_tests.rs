use super::*;

fn word(w: &str, at: usize) -> Expr {
    Expr::Term(Term::Message(Text::Word(w.into())), at)
}

fn error(q: &str) -> String {
    parse(q).unwrap_err().to_string()
}

#[test]
fn todays_queries_mean_what_they_meant() {
    // words, all of them
    assert_eq!(
        parse("Timeout calling").unwrap(),
        Expr::And(vec![word("timeout", 1), word("calling", 9)])
    );
    // punctuation splits words, which must all match
    assert_eq!(
        parse("get_weather").unwrap(),
        Expr::And(vec![word("get", 1), word("weather", 1)])
    );
    // a phrase
    assert_eq!(
        parse("\"timed out\" x").unwrap(),
        Expr::And(vec![
            Expr::Term(
                Term::Message(Text::Phrase(vec!["timed".into(), "out".into()])),
                1
            ),
            word("x", 13)
        ])
    );
    // a colon after what is not a field: words
    assert_eq!(
        parse("https://example.com").unwrap(),
        Expr::And(vec![word("https", 1), word("example", 1), word("com", 1)])
    );
    // user_id is no field of a query, which reads only the caller's logs: words
    assert_eq!(
        parse("user_id:u1").unwrap(),
        Expr::And(vec![word("user", 1), word("id", 1), word("u1", 1)])
    );
    // a lone dash, lower-case or, stray stars: words and punctuation
    assert_eq!(
        parse("a - b or *").unwrap(),
        Expr::And(vec![word("a", 1), word("b", 5), word("or", 7)])
    );
}

#[test]
fn operators_group_as_written() {
    let q = parse("(timeout OR \"rate limit\") -retry status:error").unwrap();
    assert_eq!(
        q,
        Expr::And(vec![
            Expr::Or(vec![
                word("timeout", 2),
                Expr::Term(
                    Term::Message(Text::Phrase(vec!["rate".into(), "limit".into()])),
                    13
                ),
            ]),
            Expr::Not(Box::new(word("retry", 28))),
            Expr::Term(Term::Status(LogStatus::Error), 34),
        ])
    );
    // OR binds looser than the words around it
    assert_eq!(
        parse("a b OR c").unwrap(),
        Expr::Or(vec![
            Expr::And(vec![word("a", 1), word("b", 3)]),
            word("c", 8)
        ])
    );
    assert_eq!(
        parse("-\"a b\"").unwrap(),
        Expr::Not(Box::new(Expr::Term(
            Term::Message(Text::Phrase(vec!["a".into(), "b".into()])),
            2
        )))
    );
}

#[test]
fn prefixes_and_fields() {
    assert_eq!(
        parse("timeo*").unwrap(),
        Expr::Term(Term::Message(Text::Prefix("timeo".into())), 1)
    );
    assert_eq!(
        parse("log_type:end*").unwrap(),
        Expr::Term(Term::LogType(LogType::EndCallWebhook), 1)
    );
    assert_eq!(
        parse("assistant_id:\"support bot\" room_name:room-4*").unwrap(),
        Expr::And(vec![
            Expr::Term(Term::AssistantId(Value::Is("support bot".into())), 1),
            Expr::Term(Term::RoomName(Value::Prefix("room-4".into())), 28),
        ])
    );
    assert_eq!(
        parse("request_data.payload.caller_number:\"+919876543210\"").unwrap(),
        Expr::Term(
            Term::Payload {
                path: "request_data.payload.caller_number".into(),
                value: Value::Is("+919876543210".into())
            },
            1
        )
    );
    assert_eq!(
        parse("response_data.context_keys:cust*").unwrap(),
        Expr::Term(
            Term::Payload {
                path: "response_data.context_keys".into(),
                value: Value::Prefix("cust".into())
            },
            1
        )
    );
    assert_eq!(
        parse("message:\"timed out\"").unwrap(),
        Expr::Term(
            Term::Message(Text::Phrase(vec!["timed".into(), "out".into()])),
            1
        )
    );
}

#[test]
fn errors_name_the_problem_and_where_it_is() {
    let cases = [
        (
            "\"open",
            "q has an unbalanced double quote (at character 1)",
        ),
        (":: *", "q must contain at least one word"),
        ("a OR", "q has OR without a term after it (at character 3)"),
        ("OR a", "q has OR without a term before it (at character 1)"),
        (
            "a OR OR b",
            "q has OR without a term after it (at character 3)",
        ),
        ("(a b", "q has a '(' that is never closed (at character 1)"),
        ("a b)", "q has a ')' without its '(' (at character 4)"),
        ("x ()", "q has an empty group '()' (at character 4)"),
        ("- ! (-)", "q must contain at least one word"),
        (
            "a -OR b",
            "q has '-' without a term after it (at character 3)",
        ),
        (
            "t*",
            "q has the prefix \"t*\": a prefix needs at least 2 characters before the star (at character 1)",
        ),
        (
            "status:done",
            "q has status:done, which none is: status is one of success, error (at character 1)",
        ),
        (
            "log_type:x*",
            "q has the prefix \"x*\": a prefix needs at least 2 characters before the star (at character 1)",
        ),
        (
            "a request_data:x",
            "q has request_data: without a path; name one, such as request_data.payload.caller_number:… (at character 3)",
        ),
        (
            "response_data..x:1",
            "q has the path response_data..x, which is not one: keys joined by dots, at most 256 bytes (at character 1)",
        ),
        ("status:", "q has status: without a value (at character 1)"),
        (
            "room_name:\"\"",
            "q has room_name: without a value (at character 1)",
        ),
    ];
    for (q, expected) in cases {
        assert_eq!(error(q), expected, "{q}");
    }
    assert_eq!(
        error(&"a".repeat(MAX_Q_BYTES + 1)),
        "q must be at most 1024 bytes"
    );
    assert_eq!(
        error(&"a".repeat(MAX_WORD_BYTES + 1)),
        "q has a word longer than 100 bytes (at character 1)"
    );
    assert_eq!(
        error(&format!("{}x{}", "(".repeat(17), ")".repeat(17))),
        "q nests parentheses deeper than 16 (at character 17)"
    );
}

#[test]
fn punctuation_is_as_if_not_typed() {
    assert_eq!(parse("a OR !!!").unwrap(), word("a", 1));
    assert_eq!(parse("a message:!! message:\"*\"").unwrap(), word("a", 1));
    assert_eq!(parse("-!!! a").unwrap(), word("a", 6));
    assert_eq!(parse("(!!!) a").unwrap(), word("a", 7));
}

#[test]
fn dashes_cancel_out_in_pairs() {
    assert_eq!(parse("--a").unwrap(), word("a", 3));
    let many = format!("{}a", "-".repeat(1001));
    assert_eq!(parse(&many).unwrap(), Expr::Not(Box::new(word("a", 1002))));
}

#[test]
fn garbage_never_panics() {
    let pieces = [
        "(",
        ")",
        "\"",
        "-",
        "OR",
        "*",
        ":",
        "a",
        "status:",
        "request_data.x:",
        " ",
        "é",
        "ab*",
    ];
    let mut seed = 7u64;
    for _ in 0..20_000 {
        let mut q = String::new();
        for _ in 0..(seed % 9) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            q.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
        }
        let _ = parse(&q);
    }
}

#[test]
fn highlights_are_the_words_not_excluded() {
    let q = parse("(Timeout OR \"rate limit\") -retry ca* status:error").unwrap();
    assert_eq!(q.highlights(), ["ca*", "limit", "rate", "timeout"]);
}

#[test]
fn payload_paths_are_refused_where_they_are_not_indexed_even_excluded() {
    assert_eq!(parse("a (b OR c)").unwrap().refuse_payloads(), Ok(()));
    assert_eq!(
        parse("a -(b OR request_data.x:1)")
            .unwrap()
            .refuse_payloads()
            .unwrap_err()
            .to_string(),
        "q names a payload path, and this server does not index them ([index] payload_paths = false) (at character 10)"
    );
}
