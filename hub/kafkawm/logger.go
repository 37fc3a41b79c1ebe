package logging

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"go.uber.org/zap"
)

// AllowedWatermillFields are the watermill log field keys that are passed
// through. Every other key is dropped: watermill adds "message_uuid" and the
// produced messages' details, and a custom middleware could add anything.
var AllowedWatermillFields = map[string]bool{
	"handler_name":      true,
	"topic":             true,
	"subscriber_name":   true,
	"publisher_name":    true,
	"subscribe_topic":   true,
	"publish_topic":     true,
	"count":             true,
	"timeout":           true,
	"consumer_group":    true,
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

// Watermill adapts a zap logger to watermill.LoggerAdapter, keeping only
// allow-listed fields and logging errors by their safe text.
type Watermill struct {
	log    *zap.Logger
	fields watermill.LogFields
	trace  bool
}

// NewWatermill returns the adapter. Trace messages are dropped unless trace is set.
func NewWatermill(log *zap.Logger, trace bool) *Watermill {
	return &Watermill{log: log.With(zap.String("component", "watermill")), trace: trace}
}

func (w *Watermill) zapFields(fields watermill.LogFields) []zap.Field {
	out := make([]zap.Field, 0, len(w.fields)+len(fields))
	add := func(f watermill.LogFields) {
		for k, v := range f {
			if !AllowedWatermillFields[k] {
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
func (w *Watermill) Error(msg string, err error, fields watermill.LogFields) {
	w.log.Error(msg, append(w.zapFields(fields), Err(err))...)
}

// Info implements watermill.LoggerAdapter.
func (w *Watermill) Info(msg string, fields watermill.LogFields) {
	w.log.Info(msg, w.zapFields(fields)...)
}

// Debug implements watermill.LoggerAdapter.
func (w *Watermill) Debug(msg string, fields watermill.LogFields) {
	w.log.Debug(msg, w.zapFields(fields)...)
}

// Trace implements watermill.LoggerAdapter.
func (w *Watermill) Trace(msg string, fields watermill.LogFields) {
	if w.trace {
		w.log.Debug(msg, w.zapFields(fields)...)
	}
}

// With implements watermill.LoggerAdapter.
func (w *Watermill) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &Watermill{log: w.log, fields: w.fields.Add(fields), trace: w.trace}
}
