package foldview

import "unicode"

// NotPlainText reports whether r may not appear in the text of a resource that people read
// (display names, revocation reasons): a control character (C0 such as a newline, a tab or an
// escape, DEL, C1) or a character that changes the direction in which text is shown (U+061C,
// U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069). Auditors read such text in the history,
// in snapshots and one change a line in `guestlist audit diff`, where these characters could forge
// or hide what they read: the API refuses text holding them, and the diff quotes it.
func NotPlainText(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}
