package accel

import (
	"context"
	"errors"
	"sync"
	"time"
)

// EventType says what happened to a device.
type EventType string

// Event types.
const (
	EventAdded   EventType = "added"   // a device registered; its nodes exist
	EventRemoved EventType = "removed" // a device was unplugged; its nodes are gone
	EventStatus  EventType = "status"  // a device's status changed
	// EventResync tells a consumer that it fell behind by more events than
	// the backlog keeps; it must re-read every device's state. Lost holds
	// how many events it missed.
	EventResync EventType = "resync"
)

// Event is one change, numbered in the order the core made the changes.
type Event struct {
	Seq    uint64    `json:"seq"`
	Type   EventType `json:"type"`
	Name   string    `json:"name,omitempty"`
	Index  int       `json:"index"`
	Serial string    `json:"serial,omitempty"`
	Status Status    `json:"status"`
	Lost   uint64    `json:"lost,omitempty"`
	Time   time.Time `json:"time"`
}

// ErrClosed is returned by Subscription.Next once the registry is closed.
var ErrClosed = errors.New("accel: registry closed")

// eventLog keeps the last events in a ring and wakes every waiter on append
// by closing the current notify channel (a broadcast without per-subscriber
// queues, so a slow consumer never slows the producer).
type eventLog struct {
	mu     sync.Mutex
	ring   []Event
	next   uint64 // sequence number of the next event
	notify chan struct{}
	closed bool
}

func newEventLog(backlog int) *eventLog {
	return &eventLog{ring: make([]Event, backlog), next: 1, notify: make(chan struct{})}
}

func (l *eventLog) append(ev Event) Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ev
	}
	ev.Seq = l.next
	l.ring[ev.Seq%uint64(len(l.ring))] = ev
	l.next++
	close(l.notify)
	l.notify = make(chan struct{})
	return ev
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.notify)
	}
}

// Subscription reads events from the moment it was created, in order.
// It is not safe for concurrent use; each consumer takes its own.
type Subscription struct {
	log    *eventLog
	cursor uint64
}

// Next blocks until the next event, ctx ends, or the registry closes.
// A consumer that fell behind the backlog gets one EventResync first.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	l := s.log
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return Event{}, ErrClosed
		}
		oldest := uint64(1)
		if n := uint64(len(l.ring)); l.next > n {
			oldest = l.next - n
		}
		if s.cursor < oldest {
			lost := oldest - s.cursor
			s.cursor = oldest
			l.mu.Unlock()
			return Event{Type: EventResync, Lost: lost, Index: -1, Time: time.Now()}, nil
		}
		if s.cursor < l.next {
			ev := l.ring[s.cursor%uint64(len(l.ring))]
			s.cursor++
			l.mu.Unlock()
			return ev, nil
		}
		wait := l.notify
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}
