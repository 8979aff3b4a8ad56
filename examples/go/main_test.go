package main

import (
	"net/http"
	"testing"
	"time"
)

// The test vector of the Standard Webhooks specification.
func TestVerifyMatchesTheSpecificationVector(t *testing.T) {
	v, err := newVerifier("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte(`{"test": 2432232314}`)
	h := http.Header{}
	h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set("webhook-timestamp", "1614265330")
	h.Set("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	at := time.Unix(1614265330, 0)
	if err := v.verify(payload, h, at); err != nil {
		t.Fatalf("valid signature refused: %v", err)
	}
	if err := v.verify([]byte(`{"test": 2432232315}`), h, at); err == nil {
		t.Fatal("a changed payload was accepted")
	}
	if err := v.verify(payload, h, at.Add(10*time.Minute)); err == nil {
		t.Fatal("a stale timestamp was accepted")
	}
	h.Set("webhook-signature", "v2,abc v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	if err := v.verify(payload, h, at); err != nil {
		t.Fatalf("a valid v1 signature among several was refused: %v", err)
	}
}
