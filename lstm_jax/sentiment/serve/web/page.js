// The page's only script: sends the statements to POST /predict with explain=true and shows each answer.
// Statements are inserted with textContent only, so nothing typed can become markup.
"use strict";

const form = document.getElementById("ask");
const input = document.getElementById("statements");
const status = document.getElementById("status");
const results = document.getElementById("results");
const NEUTRAL = 0.005; // contributions smaller than half a percentage point are left uncoloured

function tokenElement(token, strongest) {
  const span = document.createElement("span");
  span.className = "token";
  span.textContent = token.token;
  span.dataset.contribution = String(token.contribution);
  const sign = token.contribution >= 0 ? "positive" : "negative";
  if (Math.abs(token.contribution) >= NEUTRAL) {
    span.classList.add("pushes-" + sign);
    const strength = 0.15 + 0.6 * Math.abs(token.contribution) / strongest;
    const colour = sign === "positive" ? "26, 127, 55" : "180, 35, 24";
    span.style.background = "rgba(" + colour + ", " + strength.toFixed(3) + ")";
  }
  if (!token.known) span.classList.add("unknown");
  const percent = (100 * token.contribution).toFixed(1);
  span.title = (token.contribution >= 0 ? "+" : "") + percent + " points" + (token.known ? "" : " (unknown word)");
  return span;
}

function resultElement(prediction) {
  const item = document.createElement("li");
  item.className = "result";
  const verdict = document.createElement("div");
  verdict.className = "verdict";
  const label = document.createElement("span");
  label.className = "label " + prediction.label;
  label.textContent = prediction.label;
  const probability = document.createElement("span");
  probability.className = "probability";
  probability.textContent = "P(positive) = " + prediction.probability_positive.toFixed(3);
  verdict.append(label, probability);
  const tokens = document.createElement("div");
  tokens.className = "tokens";
  const strongest = Math.max(NEUTRAL, ...prediction.tokens.map((token) => Math.abs(token.contribution)));
  for (const token of prediction.tokens) tokens.append(tokenElement(token, strongest), " ");
  if (prediction.tokens_not_read > 0) {
    const rest = document.createElement("span");
    rest.className = "not-read";
    rest.textContent = "(" + prediction.tokens_not_read + " more words not read: the model reads the first "
      + prediction.tokens.length + ")";
    tokens.append(rest);
  }
  const statement = document.createElement("div");
  statement.className = "statement";
  statement.hidden = true;
  statement.textContent = prediction.statement;
  item.append(verdict, tokens, statement);
  return item;
}

async function predict(event) {
  event.preventDefault();
  const statements = input.value.split("\n").map((line) => line.trim()).filter((line) => line.length > 0);
  if (statements.length === 0) {
    status.textContent = "Type at least one statement.";
    status.className = "error";
    return;
  }
  status.textContent = "predicting...";
  status.className = "";
  try {
    const response = await fetch("predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ statements: statements, explain: true }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    results.replaceChildren(...body.predictions.map(resultElement));
    status.textContent = body.predictions.length + " predicted";
    document.getElementById("model").textContent = "model: " + body.model.format + ", step " + body.model.step
      + ", threshold " + body.model.threshold;
  } catch (error) {
    status.textContent = "Error: " + error.message;
    status.className = "error";
  }
}

form.addEventListener("submit", predict);
