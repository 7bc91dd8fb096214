//! Deterministic stand-ins for the AI: no model, no network.

/// A deterministic **stand-in** for the AI's answer to a visitor's message:
/// no model, no network. The product called a language model here.
pub(crate) fn stand_in_ai_reply(visitor_message: &str) -> String {
    let words = visitor_message.split_whitespace().count();
    format!(
        "Thanks for your message ({words} word{}). This is the example's stand-in \
         for an AI reply; an operator can step in at any time.",
        if words == 1 { "" } else { "s" }
    )
}

/// A deterministic **stand-in** for the AI's polish of an operator's draft:
/// runs of whitespace become one space, the first letter is capitalised and
/// the text ends with punctuation. No model, no network.
pub(crate) fn stand_in_enhance(draft: &str) -> String {
    let mut enhanced = draft.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(first) = enhanced.chars().next() {
        let upper: String = first.to_uppercase().collect();
        enhanced.replace_range(..first.len_utf8(), &upper);
    }
    if !enhanced.ends_with(['.', '!', '?']) {
        enhanced.push('.');
    }
    enhanced
}
