// LED patterns: the same colours and rhythms the bay board shows (from /dock/led-patterns.json, made
// from the dock protocol's own table), animated with the Web Animations API.

/** Make `element` blink like the bay LED in state `led`. */
export function animateLed(element, pattern) {
  for (const running of element.getAnimations()) running.cancel();
  element.dataset.colour = pattern.colour;
  const rhythm = pattern.rhythm_ms;
  if (!rhythm.length) return;
  const period = rhythm.reduce((a, b) => a + b, 0);
  const keyframes = [];
  let at = 0;
  rhythm.forEach((ms, index) => {
    const on = index % 2 === 0;
    keyframes.push({ opacity: on ? 1 : 0.12, offset: at / period, easing: "steps(1, end)" });
    at += ms;
  });
  keyframes.push({ opacity: rhythm.length ? 0.12 : 1, offset: 1 });
  element.animate(keyframes, { duration: period, iterations: Infinity });
}

/** The LED state a bay shows: from its error class, else from its state. */
export function ledOf(bay, patterns) {
  if (bay.state === "error") {
    return patterns.error_class_leds[bay.error_class] ?? "ERROR";
  }
  // The station shows BOUNCING on a bouncing bay that showed nothing of a docking (edge/station.py;
  // a board older than dock protocol 3 shows ATTENTION instead).
  if (bay.bouncing && bay.state === "empty") return patterns.bouncing_led ?? "ATTENTION";
  return patterns.state_leds[bay.state] ?? "OFF";
}
