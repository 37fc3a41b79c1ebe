package event

// Types returns every event type a publisher may send, in the order
// ShortNames lists them (for tests: production names types by their short
// names, TypeNamed and ShortNames).
func Types() []string {
	out := make([]string, len(typeSchemas))
	for i, t := range typeSchemas {
		out[i] = t.typ
	}
	return out
}
