package topic

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Place is where a listed record sits: the time the listing orders it by
// (when it was dead-lettered, received), then its partition and offset.
type Place struct {
	Time      time.Time
	Partition int
	Offset    int64
}

// Cursor returns p as a listing's paging cursor (the place of a page's last
// item), base64url-encoded. It holds no patient data.
func (p Place) Cursor() string {
	s := strconv.FormatInt(p.Time.UnixNano(), 10) + "." + strconv.Itoa(p.Partition) + "." + strconv.FormatInt(p.Offset, 10)
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

// ErrCursor is the error of a cursor that Cursor did not make.
var ErrCursor = errors.New("the cursor is not one this listing returned")

// ParseCursor reads a cursor made by Cursor; "" is no cursor (nil).
func ParseCursor(c string) (*Place, error) {
	if c == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, ErrCursor
	}
	parts := strings.Split(string(b), ".")
	if len(parts) != 3 {
		return nil, ErrCursor
	}
	ns, err1 := strconv.ParseInt(parts[0], 10, 64)
	p, err2 := strconv.Atoi(parts[1])
	o, err3 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || p < 0 || o < 0 {
		return nil, ErrCursor
	}
	return &Place{Time: time.Unix(0, ns).UTC(), Partition: p, Offset: o}, nil
}
