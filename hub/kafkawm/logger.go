package kafkawm

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/carehub/carehub/internal/logging"
	"go.uber.org/zap"
)

// AllowedLogFields are the watermill log field keys that are passed
// through. Every other key is dropped: watermill adds "message_uuid" and the
// produced messages' details, and a custom middleware could add anything.
var AllowedLogFields = map[string]bool{
	"handler_name":      true,
	"topic":             true,
	"subscriber_name":   true,
	"publisher_name":    true,
	"subscribe_topic":   true,
	"publish_topic":     true,
	"count":             true,
	"timeout":           true,
	"consumer_group":    true,
	"brokers":           true, // host:port list: where a Kafka error came from
	"kafka_partition":   true,
	"kafka_offset":      true,
	"partition":         true,
	"offset":            true,
	"generation_id":     true,
	"member_id":         true,
	"retry_no":          true,
	"max_retries":       true,
	"wait_time":         true,
	"elapsed_time":      true,
	"message_uuid":      true, // the CloudEvents id: not patient data
	"provider":          true,
	"recipient":         true,
	"event_type":        true,
	"error_class":       true,
	"attempt":           true,
	"sleep":             true,
	"partitions_count":  true,
	"assigned":          true,
	"revoked":           true,
	"commit_offsets":    true,
	"fetch_error_class": true,
}

// Logger adapts a zap logger to watermill.LoggerAdapter, keeping only
// allow-listed fields and logging errors by their safe text.
type Logger struct {
	log    *zap.Logger
	fields watermill.LogFields
	trace  bool
}

// NewLogger returns the adapter every watermill component of the hub logs
// through. Trace messages are dropped unless trace is set.
func NewLogger(log *zap.Logger, trace bool) *Logger {
	return &Logger{log: log.With(zap.String("component", "watermill")), trace: trace}
}

func (w *Logger) zapFields(fields watermill.LogFields) []zap.Field {
	out := make([]zap.Field, 0, len(w.fields)+len(fields))
	add := func(f watermill.LogFields) {
		for k, v := range f {
			if !AllowedLogFields[k] {
				continue
			}
			switch v := v.(type) {
			case string, int, int32, int64, uint, uint32, uint64, bool, float64, time.Duration:
				out = append(out, zap.Any(k, v))
			default:
				out = append(out, zap.String(k, fmt.Sprintf("%T", v)))
			}
		}
	}
	add(w.fields)
	add(fields)
	return out
}

// Error implements watermill.LoggerAdapter.
func (w *Logger) Error(msg string, err error, fields watermill.LogFields) {
	w.log.Error(msg, append(w.zapFields(fields), logging.Err(err))...)
}

// Info implements watermill.LoggerAdapter.
func (w *Logger) Info(msg string, fields watermill.LogFields) {
	w.log.Info(msg, w.zapFields(fields)...)
}

// Debug implements watermill.LoggerAdapter.
func (w *Logger) Debug(msg string, fields watermill.LogFields) {
	w.log.Debug(msg, w.zapFields(fields)...)
}

// Trace implements watermill.LoggerAdapter.
func (w *Logger) Trace(msg string, fields watermill.LogFields) {
	if w.trace {
		w.log.Debug(msg, w.zapFields(fields)...)
	}
}

// With implements watermill.LoggerAdapter.
func (w *Logger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &Logger{log: w.log, fields: w.fields.Add(fields), trace: w.trace}
}
