package connector

import (
	"errors"
	"time"
)

// Retry bounds how a sink retries transient failures: capped exponential
// backoff between MinBackoff and MaxBackoff. It is one setting of the hub
// (delivery.minBackoff, delivery.maxBackoff), the same for every sink.
type Retry struct {
	MinBackoff time.Duration `yaml:"minBackoff" json:"minBackoff"`
	MaxBackoff time.Duration `yaml:"maxBackoff" json:"maxBackoff"`
	// MaxAttempts bounds the attempts of one Deliver; 0 means without end,
	// which is what the hub uses: an outbox is a durable backlog and
	// nothing is dropped. Tests and tools set it.
	MaxAttempts int `yaml:"-" json:"-"`
}

// Default retry bounds.
const (
	DefaultMinBackoff = 200 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// WithDefaults returns r with zero bounds replaced by the defaults.
func (r Retry) WithDefaults() Retry {
	if r.MinBackoff == 0 {
		r.MinBackoff = DefaultMinBackoff
	}
	if r.MaxBackoff == 0 {
		r.MaxBackoff = DefaultMaxBackoff
	}
	return r
}

// Validate reports bounds that cannot work.
func (r Retry) Validate() error {
	var errs []error
	if r.MinBackoff <= 0 || r.MaxBackoff <= 0 {
		errs = append(errs, errors.New("minBackoff and maxBackoff must be positive"))
	}
	if r.MinBackoff > r.MaxBackoff {
		errs = append(errs, errors.New("minBackoff must not exceed maxBackoff"))
	}
	if r.MaxAttempts < 0 {
		errs = append(errs, errors.New("maxAttempts must not be negative"))
	}
	return errors.Join(errs...)
}
