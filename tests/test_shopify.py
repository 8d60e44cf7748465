"""Shopify webhooks and LINE's account link through the runner's real HTTP server on loopback
(signed payloads shaped like Shopify's, the LINE emulator with the real line-bot-sdk)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from engine.runner.clock import ManualClock
from engine.runner.runloop import Runner, RunnerConfig
from engine.runner.server import build_app
from engine.runner.shopify import sign
from enginekit import write_folder
from serverkit import API_TOKEN, line_event, tick_later, wait_for, webhook_body
from serverkit import sign as line_sign

SHOPIFY_SECRET = "shpss_0123456789abcdef"

SETTINGS = """\
timezone: Asia/Tokyo
base_url: https://shop.example.com/line
account_link:
  login_url: https://shop.example.com/account/line-link
"""
MESSAGES = """\
thanks: "ご注文ありがとうございます"
cart_reminder: "カートに商品が残っています {{ friend.display_name }}"
shipped_notice: "発送しました"
link_account: "会員連携はこちら https://shop.example.com/account/line-link"
linked_thanks: "連携ありがとうございます"
"""
RULES = """\
rule thanks when purchased reenter always then send thanks
rule cart when carted reenter always then send cart_reminder
rule shipped when event shipped reenter always then send shipped_notice
rule ask_link when message "連携" reenter always then send link_account
rule thanks_link when linked then send linked_thanks
"""

ORDER = {
    "id": 5550000001,
    "admin_graphql_api_id": "gid://shopify/Order/5550000001",
    "name": "#1001",
    "email": "Hanako@Example.jp",
    "created_at": "2026-11-01T10:00:00+09:00",
    "currency": "JPY",
    "total_price": "5500",
    "subtotal_price": "5000",
    "financial_status": "paid",
    "cancelled_at": None,
    "customer": {"id": 7770000001, "email": "hanako@example.jp", "first_name": "花子"},
    "line_items": [
        {
            "id": 1,
            "product_id": 8880000001,
            "variant_id": 9990000001,
            "sku": "LOT-1",
            "title": "化粧水",
            "quantity": 1,
            "price": "3000",
            "product_type": "cosmetics",
        },
        {
            "id": 2,
            "product_id": 8880000002,
            "variant_id": 9990000002,
            "sku": "",
            "title": "クリーム",
            "quantity": 1,
            "price": "2000",
        },
    ],
}
REFUND = {
    "id": 6660000001,
    "order_id": 5550000001,
    "created_at": "2026-11-03T10:00:00+09:00",
    "note": "破損",
    "refund_line_items": [{"id": 1, "quantity": 1, "line_item_id": 1, "subtotal": 3000}],
    "transactions": [{"id": 1, "kind": "refund", "status": "success", "amount": "3000", "currency": "JPY"}],
}
CHECKOUT = {
    "id": 4440000001,
    "token": "abc",
    "cart_token": "c1",
    "email": "hanako@example.jp",
    "created_at": "2026-11-01T09:00:00+09:00",
    "updated_at": "2026-11-01T09:05:00+09:00",
    "completed_at": None,
    "abandoned_checkout_url": "https://shop.example.com/checkouts/abc/recover",
    "total_price": "3000",
    "customer": {"id": 7770000001, "email": "hanako@example.jp"},
    "line_items": [{"sku": "LOT-1", "product_id": 8880000001, "title": "化粧水", "quantity": 1, "price": "3000"}],
}
FULFILLMENT = {
    "id": 3330000001,
    "order_id": 5550000001,
    "name": "#1001.1",
    "status": "success",
    "created_at": "2026-11-02T15:00:00+09:00",
    "tracking_company": "Yamato (JA)",
    "tracking_number": "1234-5678-9012",
    "tracking_numbers": ["1234-5678-9012"],
    "tracking_url": "https://jizen.kuronekoyamato.co.jp/jizen/servlet/crjz.b.NQ0010?id=123456789012",
    "tracking_urls": ["https://jizen.kuronekoyamato.co.jp/jizen/servlet/crjz.b.NQ0010?id=123456789012"],
    "line_items": [{"id": 1, "sku": "LOT-1", "quantity": 1}],
}


@pytest.fixture
def open_shop(tmp_path: Path, make_client, line_emulator):
    """``await open_shop(messages, rules)``: the runner's server on the shop's folder, with
    the friend U1 on the LINE emulator; returns (client, runner, emulator)."""

    async def open_(messages: str = MESSAGES, rules: str = RULES):
        folder = write_folder(
            tmp_path / "shop", settings=SETTINGS, messages=messages, rules=rules, rule_file="shop.rule"
        )
        line_emulator.add_user("U1", "Hanako")
        client, runner = await make_client(
            {
                "SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET,
                "LINE_CHANNEL_ACCESS_TOKEN": line_emulator.access_token,
                "LINE_API_ENDPOINT": line_emulator.base_url,
            },
            rules=folder,
            tick=0.1,
            clock=ManualClock(flowing=True),
        )  # tick_later moves it
        return client, runner, line_emulator

    return open_


@pytest.fixture
async def shop(open_shop):
    return await open_shop()


async def shopify_post(
    client,
    topic: str,
    payload: dict,
    *,
    webhook_id: str,
    secret: str | None = SHOPIFY_SECRET,
    signature: str | None = None,
):
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "Content-Type": "application/json",
        "X-Shopify-Shop-Domain": "example-shop.myshopify.com",
        "X-Shopify-API-Version": "2026-07",
    }
    if signature is not None:
        headers["X-Shopify-Hmac-Sha256"] = signature
    elif secret is not None:
        headers["X-Shopify-Hmac-Sha256"] = sign(secret, body)
    return await client.post("/shopify/webhooks", data=body, headers=headers)


async def post_events(client, *events: dict):
    resp = await client.post("/events", json=list(events), headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert resp.status == 200, await resp.text()


def follow_and_identify(customer: str = "hanako@example.jp") -> list[dict]:
    return [
        {"type": "follow", "friend": "U1", "at": "2026-11-01T08:00:00+09:00"},
        {"type": "identify", "friend": "U1", "at": "2026-11-01T08:01:00+09:00", "customer": customer},
    ]


def texts(emulator, user: str = "U1") -> list[str]:
    return [m.get("text") for d in emulator.inboxes.get(user, []) for m in d.messages]


async def test_signed_order_for_a_linked_customer_enters_when_purchased(shop):
    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    await wait_for(lambda: "連携ありがとうございます" in texts(emulator))
    resp = await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0001")
    assert resp.status == 200
    assert await resp.json() == {"applied": 1, "duplicates": 0}
    await wait_for(lambda: "ご注文ありがとうございます" in texts(emulator))
    friend = runner.store.friend("U1")
    assert (friend["orders"], friend["total_spent"]) == (1, 5500)
    items = runner.store.conn.execute(
        "SELECT product, category, amount FROM activity WHERE kind = 'purchase' ORDER BY product"
    ).fetchall()
    assert [tuple(r) for r in items] == [("8880000002", None, 2000), ("LOT-1", "cosmetics", 3000)]


async def test_order_for_an_unlinked_customer_is_kept_and_counts_after_identify(shop):
    client, runner, emulator = shop
    await post_events(client, {"type": "follow", "friend": "U1", "at": "2026-11-01T08:00:00+09:00"})
    resp = await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0002")
    assert resp.status == 200
    await wait_for(lambda: runner.store.health()["pending_events"] == 0)
    assert runner.store.friend("U1")["orders"] == 0
    await post_events(client, follow_and_identify()[1])
    await wait_for(lambda: "連携ありがとうございます" in texts(emulator))
    await wait_for(lambda: runner.store.friend("U1")["orders"] == 1)
    assert runner.store.friend("U1")["total_spent"] == 5500
    await tick_later(runner)
    assert [r["rule"] for r in runner.store.outbox()] == ["thanks_link"]
    assert "ご注文ありがとうございます" not in texts(emulator)  # history does not fire `when purchased`


async def test_a_replayed_webhook_applies_once(shop):
    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    for expected in ({"applied": 1, "duplicates": 0}, {"applied": 0, "duplicates": 1}):
        resp = await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0003")
        assert await resp.json() == expected
    for expected in ({"applied": 1, "duplicates": 0}, {"applied": 0, "duplicates": 1}):
        resp = await shopify_post(client, "refunds/create", REFUND, webhook_id="b54557e4-0004")
        assert await resp.json() == expected
    # the same refund under another webhook id (a second subscription) is the same refund
    resp = await shopify_post(client, "refunds/create", REFUND, webhook_id="b54557e4-9999")
    assert await resp.json() == {"applied": 0, "duplicates": 1}
    await wait_for(lambda: runner.store.health()["pending_events"] == 0)
    await wait_for(lambda: texts(emulator).count("ご注文ありがとうございます") == 1)
    friend = runner.store.friend("U1")
    assert (friend["orders"], friend["total_spent"]) == (1, 2500)  # 5,500 less one refund of 3,000


async def test_a_cancelled_order_leaves_orders_and_spend(shop):
    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0005")
    cancelled = {**ORDER, "cancelled_at": "2026-11-01T12:00:00+09:00", "cancel_reason": "customer"}
    assert (await shopify_post(client, "orders/cancelled", cancelled, webhook_id="b54557e4-0006")).status == 200
    await wait_for(lambda: runner.store.health()["pending_events"] == 0)
    friend = runner.store.friend("U1")
    assert (friend["orders"], friend["total_spent"], friend["last_purchase_at"]) == (0, 0, None)


@pytest.mark.parametrize("how", ["missing", "wrong secret", "other body"])
async def test_bad_or_missing_signature_gets_401_and_nothing_is_stored(shop, how):
    client, runner, emulator = shop
    kwargs = {
        "missing": {"secret": None},
        "wrong secret": {"secret": "not-the-secret"},
        "other body": {"signature": sign(SHOPIFY_SECRET, b"{}")},
    }[how]
    resp = await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0007", **kwargs)
    assert resp.status == 401
    assert runner.store.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0


async def test_without_the_secret_the_endpoint_is_refused(tmp_path, aiohttp_client):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "main.rule").write_text("rule r when purchased then send m\n", encoding="utf-8")
    (rules / "messages.yaml").write_text("m: hi\n", encoding="utf-8")
    config = RunnerConfig.from_env({}, rules_dir=rules, db=tmp_path / "x.db", listen="127.0.0.1:0")
    runner = Runner.open(config)
    client = await aiohttp_client(build_app(runner, loops=False))
    try:
        resp = await shopify_post(client, "orders/create", ORDER, webhook_id="w")
        assert resp.status == 503
        assert "SHOPIFY_WEBHOOK_SECRET" in (await resp.json())["error"]
    finally:
        await client.close()
        runner.close()


async def test_checkout_enters_the_cart_rule_and_fulfillment_sends_the_shipped_notice(shop):
    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0008")
    await shopify_post(client, "checkouts/create", CHECKOUT, webhook_id="b54557e4-0009")
    await wait_for(lambda: any(t.startswith("カートに商品が残っています") for t in texts(emulator)))
    await shopify_post(client, "fulfillments/create", FULFILLMENT, webhook_id="b54557e4-0010")
    await wait_for(lambda: "発送しました" in texts(emulator))
    row = runner.store.conn.execute("SELECT friend, data FROM events WHERE type = 'shipped'").fetchone()
    data = json.loads(row[1])
    assert row[0] == "U1"
    assert data["tracking_url"] == FULFILLMENT["tracking_url"]
    assert (data["tracking_number"], data["carrier"], data["order_name"]) == ("1234-5678-9012", "Yamato (JA)", "#1001")
    cart = json.loads(runner.store.conn.execute("SELECT data FROM events WHERE type = 'cart'").fetchone()[0])
    assert (cart["product"], cart["checkout_url"]) == ("LOT-1", CHECKOUT["abandoned_checkout_url"])


async def test_unknown_topics_are_answered_200_and_ignored(shop):
    client, runner, emulator = shop
    resp = await shopify_post(client, "products/update", {"id": 1}, webhook_id="b54557e4-0011")
    assert resp.status == 200 and (await resp.json())["ignored"] is True
    resp = await shopify_post(client, "orders/create", {"name": "#1"}, webhook_id="b54557e4-0012")
    assert resp.status == 400 and "`id` is missing" in (await resp.json())["error"]


async def test_line_account_link_flow_links_the_friend_and_fires_when_linked(shop):
    client, runner, emulator = shop
    await post_events(client, {"type": "follow", "friend": "U1", "at": "2026-11-01T08:00:00+09:00"})
    # the shop's order arrives before the link: kept
    await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0013")
    # the friend asks in chat; the answer carries the tracked login link
    body = webhook_body(
        line_event(
            "message",
            "U1",
            event_id="01LINK0001",
            reply_token=emulator.issue_reply_token("U1"),
            message={"type": "text", "id": "1", "text": "連携したい"},
        )
    )
    assert (await client.post("/callback", data=body, headers={"x-line-signature": line_sign(body)})).status == 200
    text = await wait_for(lambda: next((t for t in texts(emulator) if t.startswith("会員連携")), None))
    token = re.search(r"https://shop\.example\.com/line/c/(\S+)", text).group(1)
    # the friend taps it: the runner gets a link token from LINE and sends them to the login page
    resp = await client.get(f"/c/{token}", allow_redirects=False)
    assert resp.status == 302
    target = urlsplit(resp.headers["Location"])
    assert target.netloc + target.path == "shop.example.com/account/line-link"
    link_token = parse_qs(target.query)["linkToken"][0]
    assert emulator.requests_to("link_token")[0].path == "/v2/bot/user/U1/linkToken"
    # the shop signs the customer in and registers the nonce
    resp = await client.post(
        "/account-link/nonce",
        json={"customer": "hanako@example.jp", "link_token": link_token},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    answer = await resp.json()
    assert resp.status == 200
    assert answer["redirect_url"].startswith("https://access.line.me/dialog/bot/accountLink?linkToken=")
    # LINE completes it and sends the accountLink webhook
    event = emulator.account_link_event(link_token, answer["nonce"])
    body = webhook_body(event)
    assert (await client.post("/callback", data=body, headers={"x-line-signature": line_sign(body)})).status == 200
    await wait_for(lambda: "連携ありがとうございます" in texts(emulator))
    assert runner.store.friend("U1")["orders"] == 1  # the kept order counts now
    # a second use of the same token fails at LINE and links nothing again
    again = emulator.account_link_event(link_token, answer["nonce"])
    assert again["link"]["result"] == "failed"


async def test_account_link_nonce_needs_the_bearer_token_and_fields(shop):
    client, runner, emulator = shop
    resp = await client.post("/account-link/nonce", json={"customer": "c"})
    assert resp.status == 401
    resp = await client.post(
        "/account-link/nonce", json={"customer": "c"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert resp.status == 400 and (await resp.json())["error"] == 'field "link_token": is missing'


async def test_the_shop_routes_answer_in_the_folders_language_and_take_bearer_in_any_case(tmp_path, make_client):
    # a folder that says `language: ja`: the shop routes' reasons are Japanese, as /events'
    folder = write_folder(
        tmp_path / "ja", settings=SETTINGS + "language: ja\n", messages=MESSAGES, rules=RULES, rule_file="shop.rule"
    )
    client, runner = await make_client({"SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET}, rules=folder, loops=False)
    resp = await client.post("/account-link/nonce", json={"customer": "c"}, headers={"Authorization": "Bearer x"})
    assert (resp.status, (await resp.json())["error"]) == (401, "Bearer トークンがないか、違います")
    # the scheme in lower case is the same scheme (RFC 9110); the token itself must match
    resp = await client.post(
        "/account-link/nonce", json={"customer": "c"}, headers={"Authorization": f"bearer  {API_TOKEN}"}
    )
    assert (resp.status, (await resp.json())["error"]) == (400, '項目 "link_token": 必須です')
    resp = await client.post("/events", json={}, headers={"Authorization": f"BEARER {API_TOKEN.upper()}x"})
    assert resp.status == 401
    resp = await shopify_post(client, "orders/create", {"name": "#1"}, webhook_id="b54557e4-0015")
    assert (resp.status, (await resp.json())["error"]) == (400, "`id` がありません")


async def test_a_non_ascii_signature_is_401_not_500(shop):
    client, runner, emulator = shop
    resp = await shopify_post(client, "orders/create", ORDER, webhook_id="b54557e4-0014", signature="署名")
    assert resp.status == 401


#: Shopify's order export of the same order as ORDER (``Id`` is the order's id, as in webhooks).
EXPORT = """Name,Email,Financial Status,Currency,Total,Created at,Lineitem quantity,Lineitem name,Lineitem price,Lineitem sku,Cancelled at,Refunded Amount,Id
#1001,hanako@example.jp,paid,JPY,5500,2026-11-01 10:00:00 +0900,1,化粧水,3000,LOT-1,,0,5550000001
#1001,,,,,,1,クリーム,2000,,,,
"""


async def test_webhooks_for_an_imported_order_find_it_by_shopifys_id(shop, tmp_path):

    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    await wait_for(lambda: "連携ありがとうございます" in texts(emulator))
    export = tmp_path / "orders_export.csv"
    export.write_text(EXPORT, encoding="utf-8")
    result = import_shopify(runner, export)
    assert result.exit_code == 0, result.output
    await wait_for(lambda: runner.store.friend("U1")["total_spent"] == 5500)
    # the order was placed before the import; it is refunded and shipped after it
    assert (await shopify_post(client, "refunds/create", REFUND, webhook_id="imp-1")).status == 200
    assert (await shopify_post(client, "fulfillments/create", FULFILLMENT, webhook_id="imp-2")).status == 200
    await wait_for(lambda: "発送しました" in texts(emulator))
    await wait_for(lambda: runner.store.health()["pending_events"] == 0)
    friend = runner.store.friend("U1")
    assert (friend["orders"], friend["total_spent"]) == (1, 2500)
    assert "ご注文ありがとうございます" not in texts(emulator)


async def test_a_refund_that_arrives_before_its_order_applies_when_the_order_arrives(shop):
    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    assert (await shopify_post(client, "refunds/create", REFUND, webhook_id="early-1")).status == 200
    await wait_for(lambda: runner.store.health()["pending_events"] == 0)
    assert (await shopify_post(client, "orders/create", ORDER, webhook_id="early-2")).status == 200
    await wait_for(lambda: "ご注文ありがとうございます" in texts(emulator))
    await wait_for(lambda: runner.store.health()["pending_events"] == 0)
    friend = runner.store.friend("U1")
    assert (friend["orders"], friend["total_spent"]) == (1, 2500)  # 5,500 less the refund of 3,000
    assert runner.store.conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1


async def test_an_export_imported_without_id_gets_it_from_a_newer_export(shop, tmp_path):

    client, runner, emulator = shop
    await post_events(client, *follow_and_identify())
    await wait_for(lambda: "連携ありがとうございます" in texts(emulator))
    export = tmp_path / "orders_export.csv"

    def import_export(text: str) -> str:
        export.write_text(text, encoding="utf-8")
        result = import_shopify(runner, export)
        assert result.exit_code == 0, result.output
        return result.output

    without_id = "\n".join(",".join(row.split(",")[:-1]) for row in EXPORT.splitlines()) + "\n"
    import_export(without_id)
    assert "1 already imported (unchanged)" in import_export(EXPORT)
    assert (await shopify_post(client, "refunds/create", REFUND, webhook_id="imp-3")).status == 200
    await wait_for(lambda: runner.store.friend("U1")["total_spent"] == 2500)
    assert runner.store.friend("U1")["orders"] == 1


async def test_the_shipping_notice_carries_shopifys_tracking_link_and_number(open_shop):
    client, runner, line_emulator = await open_shop(
        messages='shipped_notice: "発送しました {{ event.carrier }} {{ event.tracking_number }} '
        '{{ event.tracking_url }}"\n'
        'thanks: "ご注文 {{ event.order_id }} {{ event.amount }}円"\n',
        rules="rule shipped when event shipped reenter always uncapped then send shipped_notice\n"
        "rule thanks when purchased then send thanks\n",
    )
    await post_events(client, *follow_and_identify())
    await shopify_post(client, "orders/create", ORDER, webhook_id="ship-1")
    await shopify_post(client, "fulfillments/create", FULFILLMENT, webhook_id="ship-2")
    text = await wait_for(lambda: next((t for t in texts(line_emulator) if t.startswith("発送しました")), None))
    assert "ご注文 #1001 5500円" in texts(line_emulator)  # Shopify's "5500" is a whole yen amount
    # the link is tracked (base_url): it leads to Yamato's page for this parcel
    url = text.split()[-1]
    assert text.split()[1:3] == ["Yamato", "(JA)"] and text.split()[3] == "1234-5678-9012"
    token = url.rsplit("/", 1)[-1]
    resp = await client.get(f"/c/{token}", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith(FULFILLMENT["tracking_url"])


def import_shopify(runner, export):
    """``linerules import orders EXPORT --format shopify`` into the runner's database."""
    from click.testing import CliRunner

    from engine.cli import cli

    return CliRunner().invoke(
        cli,
        [
            "import",
            "orders",
            str(export),
            "--format",
            "shopify",
            "--db",
            str(runner.config.db),
            "--rules",
            str(runner.config.rules_dir),
        ],
    )
