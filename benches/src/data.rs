//! Deterministic benchmark inputs.

/// A small deterministic PRNG (splitmix64); good enough to place edits and pick words.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; slightly biased, irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `len` incompressible bytes (BLAKE3 XOF of the seed).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new_derive_key("dooz-benches random input");
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are",
    "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by",
    "not", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there",
    "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time",
    "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these",
    "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could",
    "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new",
    "work", "part", "take", "get", "place", "made", "live", "where", "after", "back", "little",
    "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our", "under",
    "name", "very", "through", "just", "form", "sentence", "great", "think", "say", "help", "low",
    "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old",
    "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play", "small",
    "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here",
    "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went", "light",
    "kind", "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother",
    "world", "near", "build", "self", "earth", "father", "head", "stand", "own", "page", "should",
    "country", "found", "answer", "school", "grow", "study", "still", "learn", "plant", "cover",
    "food", "sun", "four", "between", "state", "keep", "eye", "never", "last", "let", "thought",
    "city", "tree", "cross", "farm", "hard", "start", "might", "story", "saw", "far", "sea", "draw",
    "left", "late", "run", "while", "press", "close", "night", "real", "life", "few", "north",
    "synchronisation", "encrypted", "device", "chunk", "vault", "server", "Dooz",
];

/// `len` bytes of deterministic pseudo-English: Zipf-like word choice, sentences, commas,
/// numbers and paragraphs. Compresses roughly like prose (zstd ≈ 3×).
pub fn text_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x7465_7874);
    let mut out = Vec::with_capacity(len + 64);
    let mut sentence_words = 0usize;
    let mut sentence_len = 8;
    let mut sentences = 0usize;
    while out.len() < len {
        // Frequent words much more often (roughly Zipf via a cubed uniform).
        let u = rng.unit();
        let word = if rng.below(50) == 0 {
            format!("{}", rng.below(10_000))
        } else {
            WORDS
                .get((u * u * u * WORDS.len() as f64) as usize)
                .copied()
                .unwrap_or("the")
                .to_owned()
        };
        if sentence_words == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase().to_string().bytes());
                out.extend_from_slice(chars.as_str().as_bytes());
            }
        } else {
            out.extend_from_slice(word.as_bytes());
        }
        sentence_words += 1;
        if sentence_words >= sentence_len {
            out.push(if rng.below(8) == 0 { b'?' } else { b'.' });
            sentence_words = 0;
            sentence_len = 4 + rng.below(18);
            sentences += 1;
            if sentences.is_multiple_of(3 + rng.below(6)) {
                out.extend_from_slice(b"\n\n");
            } else {
                out.push(b' ');
            }
        } else if rng.below(12) == 0 {
            out.extend_from_slice(b", ");
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(text_like(5000, 3), text_like(5000, 3));
        assert_ne!(text_like(5000, 3), text_like(5000, 4));
        assert_ne!(random_bytes(64, 1), random_bytes(64, 2));
        let text = text_like(100_000, 1);
        let spaces = text.iter().filter(|&&b| b == b' ').count();
        assert!(spaces > 10_000 && spaces < 30_000, "{spaces}");
    }
}
