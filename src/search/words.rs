//! Words: how a message, a payload's text and a query are cut into the terms search matches.

use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer, TokenStream};

/// Longest word that is indexed, in bytes; longer words are not searchable.
pub const MAX_WORD_BYTES: usize = 100;

/// The words of a text, split on everything but letters and digits and lower-cased, long ones
/// included (which the index drops): a query checks their length itself.
pub fn words(text: &str) -> Vec<String> {
    let mut analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(LowerCaser)
        .build();
    let mut stream = analyzer.token_stream(text);
    let mut words = Vec::new();
    while let Some(token) = stream.next() {
        words.push(token.text.clone());
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_punctuation_and_lowercase() {
        assert_eq!(
            words("Tool get_weather: HTTP 200 (OK) user_id:x"),
            [
                "tool", "get", "weather", "http", "200", "ok", "user", "id", "x"
            ]
        );
        assert_eq!(
            words("Größe ÉTÉ +919876543210"),
            ["größe", "été", "919876543210"]
        );
    }
}
