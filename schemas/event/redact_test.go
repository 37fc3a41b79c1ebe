package event

import "testing"

// TestNotificationOnlyMethodLeavesTheEventUnchanged: the router decodes an
// event once and may make a notification-only copy of it for one recipient
// and a full copy for another.
func TestNotificationOnlyMethodLeavesTheEventUnchanged(t *testing.T) {
	e, err := Unmarshal(readExample(t, "discharge.json"))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := e.Marshal()
	thin, err := e.NotificationOnly()
	if err != nil {
		t.Fatal(err)
	}
	after, _ := e.Marshal()
	if string(before) != string(after) {
		t.Errorf("NotificationOnly changed the event it was called on")
	}
	want, _ := NotificationOnly(before)
	if string(thin) != string(want) {
		t.Errorf("method and function differ:\n\tgot  %s\n\twant %s", thin, want)
	}
}
