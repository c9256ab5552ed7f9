package command

import (
	"fmt"
	"strings"

	"guestlist.dev/projections/foldview"
	"guestlist.dev/services/api/apistatus"
)

// checkText returns INVALID_ARGUMENT naming field when value, text that people read (a display
// name, a revocation reason), holds a character foldview.NotPlainText refuses: a control
// character (a newline, an escape sequence, NUL) or a bidirectional override there would let
// whoever writes it forge or hide what an auditor reads, for example a line of
// `guestlist audit diff`.
func checkText(field, value string) error {
	i := strings.IndexFunc(value, foldview.NotPlainText)
	if i < 0 {
		return nil
	}
	r := []rune(value[i:])[0]
	return apistatus.InvalidArgument(apistatus.Violation{Field: field, Reason: fmt.Sprintf(
		"contains the character %U at byte %d; control characters (newlines, tabs, escapes) and bidirectional formatting characters are not allowed", r, i)})
}
