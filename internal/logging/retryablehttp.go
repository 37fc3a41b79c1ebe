package logging

import (
	"net/url"

	"go.uber.org/zap"
)

// Retryable adapts zap to go-retryablehttp's LeveledLogger. The library logs
// "url" on every request and retry; this keeps the method, the host and the
// retry numbers and drops everything else. Its own Info "performing request"
// lines are logged at debug level.
type Retryable struct{ log *zap.Logger }

// NewRetryable returns the adapter.
func NewRetryable(log *zap.Logger) *Retryable {
	return &Retryable{log: log.With(zap.String("component", "http-delivery"))}
}

func (r *Retryable) fields(kv []any) []zap.Field {
	var out []zap.Field
	for i := 0; i+1 < len(kv); i += 2 {
		k, _ := kv[i].(string)
		switch k {
		case "method", "retries", "remaining":
			out = append(out, zap.Any(k, kv[i+1]))
		case "url":
			switch u := kv[i+1].(type) {
			case *url.URL:
				out = append(out, zap.String("host", u.Host))
			case string:
				out = append(out, zap.String("host", Host(u)))
			}
		case "error":
			if err, ok := kv[i+1].(error); ok {
				out = append(out, Err(err))
			}
		}
	}
	return out
}

// Error implements retryablehttp.LeveledLogger.
func (r *Retryable) Error(msg string, kv ...any) { r.log.Warn(msg, r.fields(kv)...) }

// Info implements retryablehttp.LeveledLogger.
func (r *Retryable) Info(msg string, kv ...any) { r.log.Debug(msg, r.fields(kv)...) }

// Debug implements retryablehttp.LeveledLogger.
func (r *Retryable) Debug(msg string, kv ...any) { r.log.Debug(msg, r.fields(kv)...) }

// Warn implements retryablehttp.LeveledLogger.
func (r *Retryable) Warn(msg string, kv ...any) { r.log.Warn(msg, r.fields(kv)...) }
