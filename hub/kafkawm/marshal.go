package kafkawm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"syscall"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/segmentio/kafka-go"
)

const (
	// UUIDHeader is the Kafka header carrying the watermill message UUID.
	UUIDHeader = "_watermill_message_uuid"
	// DefaultKeyMetadata is the default metadata field whose value is the
	// Kafka record key.
	DefaultKeyMetadata = "partition_key"
	// PartitionMetadata is the metadata field in which the Subscriber puts
	// the record's partition (decimal).
	PartitionMetadata = "kafka_partition"
	// OffsetMetadata is the metadata field in which the Subscriber puts the
	// record's offset (decimal).
	OffsetMetadata = "kafka_offset"
	// HighWaterMarkMetadata is the metadata field in which the Subscriber
	// puts the partition's high-water mark (the offset after the last
	// committed record) as reported by the fetch that returned the record:
	// every offset below it had landed when the fetch was answered.
	HighWaterMarkMetadata = "kafka_high_water_mark"
)

// toKafka converts a watermill message to a Kafka record for topic.
func toKafka(topic, keyMeta string, msg *message.Message) kafka.Message {
	km := kafka.Message{Topic: topic, Value: msg.Payload}
	names := make([]string, 0, len(msg.Metadata))
	for k := range msg.Metadata {
		switch k {
		case keyMeta:
			km.Key = []byte(msg.Metadata[k])
		case UUIDHeader, PartitionMetadata, OffsetMetadata, HighWaterMarkMetadata:
		default:
			names = append(names, k)
		}
	}
	sort.Strings(names)
	km.Headers = make([]kafka.Header, 0, len(names)+1)
	km.Headers = append(km.Headers, kafka.Header{Key: UUIDHeader, Value: []byte(msg.UUID)})
	for _, k := range names {
		km.Headers = append(km.Headers, kafka.Header{Key: k, Value: []byte(msg.Metadata[k])})
	}
	return km
}

// toWatermill converts a consumed Kafka record to a new watermill message.
// A record without a UUID header (written by another client) gets the UUID
// "<topic>/<partition>/<offset>", stable across redeliveries.
func toWatermill(keyMeta string, km kafka.Message) *message.Message {
	uuid := ""
	md := make(message.Metadata, len(km.Headers)+3)
	for _, h := range km.Headers {
		if h.Key == UUIDHeader {
			uuid = string(h.Value)
			continue
		}
		md[h.Key] = string(h.Value)
	}
	if uuid == "" {
		uuid = km.Topic + "/" + strconv.Itoa(km.Partition) + "/" + strconv.FormatInt(km.Offset, 10)
	}
	if km.Key != nil {
		md[keyMeta] = string(km.Key)
	}
	md[PartitionMetadata] = strconv.Itoa(km.Partition)
	md[OffsetMetadata] = strconv.FormatInt(km.Offset, 10)
	md[HighWaterMarkMetadata] = strconv.FormatInt(km.HighWaterMark, 10)
	msg := message.NewMessage(uuid, km.Value)
	msg.Metadata = md
	return msg
}

// safeError returns err stripped of anything that can carry a record: kafka-go
// returns MessageTooLargeError holding the message itself.
func safeError(err error) error {
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		return kafka.MessageSizeTooLarge
	}
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		return kerr
	}
	return err
}

// errorKind describes err for logs without the full text (which for some
// errors could carry more than we want in a log): the Kafka error name, the
// name of a well-known sentinel or system error, else the Go type.
func errorKind(err error) string {
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		return kerr.Title()
	}
	if errors.As(err, new(kafka.MessageTooLargeError)) {
		return kafka.MessageSizeTooLarge.Title()
	}
	for _, known := range []error{io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe, context.Canceled,
		context.DeadlineExceeded, kafka.ErrGroupClosed, kafka.ErrGenerationEnded, net.ErrClosed} {
		if errors.Is(err, known) {
			return known.Error()
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return "network timeout"
	}
	var operr *net.OpError
	if errors.As(err, &operr) {
		return "network error (" + operr.Op + ")"
	}
	return fmt.Sprintf("%T", err)
}
