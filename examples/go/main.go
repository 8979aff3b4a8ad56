// A small order service beside a jetway sidecar, standard library only.
//
// POST /orders {"id": "1001", ...} places an order: it is published to
// orders.created through jetway with the order id as Idempotency-Key, so a
// client that retries the call stores the event once. jetway delivers every
// orders.created event to POST /events/order-created, signed with Standard
// Webhooks; the handler verifies the signature, drops repeats by
// Idempotency-Key and answers 2xx. GET /stats tells run.sh what happened.
//
// To show a retry, the first delivery is processed and then answered 503,
// as if the service had crashed before its answer got out; jetway sends it
// again (same Idempotency-Key) and the handler recognises the repeat.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// verifier checks Standard Webhooks signatures
// (https://www.standardwebhooks.com). This is the specification's
// algorithm with the standard library only, because this example must
// build without module downloads; in production use the maintained
// library, github.com/standard-webhooks/standard-webhooks/libraries/go
// (package standardwebhooks: NewWebhook(secret).Verify(payload, headers)).
type verifier struct{ key []byte }

// tolerance is how far webhook-timestamp may be from now (the spec's 5 minutes).
const tolerance = 5 * time.Minute

var errSignature = errors.New("bad signature")

func newVerifier(secret string) (verifier, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 {
		return verifier{}, fmt.Errorf("the secret must be whsec_ and base64: %v", err)
	}
	return verifier{key: key}, nil
}

func (v verifier) verify(payload []byte, h http.Header, now time.Time) error {
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errSignature
	}
	seconds, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errSignature
	}
	if d := now.Sub(time.Unix(seconds, 0)); d > tolerance || d < -tolerance {
		return errSignature
	}
	mac := hmac.New(sha256.New, v.key)
	fmt.Fprintf(mac, "%s.%s.", id, ts)
	mac.Write(payload)
	want := mac.Sum(nil)
	// Several signatures may be sent (key rotation), space-separated.
	for _, versioned := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(versioned, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errSignature
}

type service struct {
	jetway   string
	verifier verifier
	client   *http.Client

	mu sync.Mutex
	// Idempotency-Key -> order. In production: a table with a unique key,
	// written in the same transaction as the order's side effects.
	processed         map[string]json.RawMessage
	deliveries        int
	duplicates        int
	forged            int
	published         int
	publishDuplicates int
	attempts          []string
	crashOnce         bool
}

type pubAck struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
}

// publish sends an order event; jetway answers only after JetStream's PubAck.
func (s *service) publish(order []byte, id string) (pubAck, error) {
	var ack pubAck
	req, err := http.NewRequest(http.MethodPost, s.jetway+"/v1/publish/orders.created", bytes.NewReader(order))
	if err != nil {
		return ack, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "order-"+id)
	resp, err := s.client.Do(req)
	if err != nil {
		return ack, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return ack, err
	}
	if resp.StatusCode != http.StatusOK {
		return ack, fmt.Errorf("jetway answered %d: %s", resp.StatusCode, body)
	}
	return ack, json.Unmarshal(body, &ack)
}

func (s *service) placeOrder(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var order struct {
		ID string `json:"id"`
	}
	if err != nil || json.Unmarshal(body, &order) != nil || order.ID == "" {
		http.Error(w, "an order is a JSON object with an id", http.StatusBadRequest)
		return
	}
	ack, err := s.publish(body, order.ID)
	if err != nil {
		// Not stored (or unknown): the client retries; the Idempotency-Key makes that safe.
		http.Error(w, "publish failed: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	s.mu.Lock()
	s.published++
	if ack.Duplicate {
		s.publishDuplicates++
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ack)
}

func (s *service) orderCreated(w http.ResponseWriter, r *http.Request) {
	// The raw body, exactly as received: the signature covers its bytes.
	payload, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "cannot read the body", http.StatusBadRequest)
		return
	}
	if err := s.verifier.verify(payload, r.Header, time.Now()); err != nil {
		s.mu.Lock()
		s.forged++
		s.mu.Unlock()
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deliveries++
	s.attempts = append(s.attempts, r.Header.Get("Jetway-Attempt"))
	if _, seen := s.processed[key]; seen {
		s.duplicates++
		fmt.Fprintln(w, "repeat dropped")
		return
	}
	s.processed[key] = json.RawMessage(payload)
	if s.crashOnce {
		s.crashOnce = false
		http.Error(w, "processed, but crashing before the answer", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *service) stats(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.processed))
	for k := range s.processed {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "processed=%s\ndeliveries=%d\nduplicates=%d\nforged=%d\npublished=%d\npublish_duplicates=%d\nattempts=%s\n",
		strings.Join(keys, ","), s.deliveries, s.duplicates, s.forged, s.published, s.publishDuplicates,
		strings.Join(s.attempts, ","))
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	v, err := newVerifier(os.Getenv("WEBHOOK_SECRET"))
	if err != nil {
		log.Fatalf("WEBHOOK_SECRET: %v", err)
	}
	s := &service{
		jetway:    env("JETWAY_URL", "http://127.0.0.1:4480"),
		verifier:  v,
		client:    &http.Client{Timeout: 10 * time.Second},
		processed: map[string]json.RawMessage{},
		crashOnce: true,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/orders", post(s.placeOrder))
	mux.HandleFunc("/events/order-created", post(s.orderCreated))
	mux.HandleFunc("/stats", s.stats)
	server := &http.Server{Addr: "127.0.0.1:" + env("PORT", "8080"), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.ListenAndServe())
}

func post(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	}
}
