// Package logging builds carehub's zap logger and the safe fields every
// part logs errors with. It is internal to carehub: the hub, the connectors
// and the command share it.
//
// Libraries log things we do not control: go-retryablehttp logs every
// request URL and embeds it in its errors, and *url.Error strings carry
// query strings. Errors are logged by their public text only
// (problem.Public) and class, and URLs reduced to their host; the
// retryablehttp adapter here does so for sinks. (The watermill adapter, with
// its allow-list of field keys, is hub/kafkawm's Logger.)
//
// Log metadata, never payloads: event id, type, source organisation, sizes,
// attempt numbers, recipient codes.
package logging

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"syscall"

	"github.com/carehub/carehub/schemas/problem"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a JSON logger at the given level ("debug", "info", "warn", "error").
func New(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("parsing log level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	return cfg.Build()
}

// Err is a zap field for err that holds only safe text: the public message of
// a *problem.Error, or the error's class for anything else (whose own text
// may hold a URL, a value or an identifier).
func Err(err error) zap.Field {
	return zap.String("error", SafeError(err))
}

// SafeError returns text about err that is safe to log: the public message
// of a *problem.Error, the text of an error marked Safe, else its class.
func SafeError(err error) string {
	if err == nil {
		return ""
	}
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe.Error()
	}
	var s Safe
	if errors.As(err, &s) {
		return s.Error()
	}
	return Class(err)
}

// Safe is an error whose whole text is known to be safe to log: it names
// classes, counts, topics and addresses, never a value or a payload. Errors
// from libraries whose text can carry data (a URL, a Kafka record) are
// classified by the package that knows them and marked Safe, so that logs
// say what went wrong ("kafka: Not Leader For Partition") instead of a Go
// type ("error (*errors.errorString)").
type Safe interface {
	error
	SafeToLog()
}

// SafeText returns an error with text marked Safe. text must hold no value
// from a message, a request or a patient record.
func SafeText(text string) error { return safeText(text) }

type safeText string

func (s safeText) Error() string { return string(s) }
func (safeText) SafeToLog()      {}

// Class names the kind of a transport or system error without its text.
func Class(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return "request error (" + ue.Op + ")"
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return "network error (" + oe.Op + ")"
	}
	inner := errors.Unwrap(err) // past a fmt.Errorf wrapper, to the informative type
	if inner == nil {
		inner = err
	}
	return fmt.Sprintf("error (%T)", inner)
}

// Host returns only the host of a URL, for logs.
func Host(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "invalid-url"
	}
	return u.Host
}
