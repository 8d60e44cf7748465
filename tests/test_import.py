"""`linerules import orders|customers` (SPEC §8, docs/shop.md): Rakuten RMS's CP932 CSV with
Japanese headers, Shopify's export (one row per line item), the plain CSV; idempotent by order
id; history applied without sending anything; refused rows as file:line with the reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.interpreter import Engine
from engine.language.project import load_project
from engine.runtime.store import Store

RAKUTEN_HEADER = "受注番号,受注ステータス,注文日時,合計金額,注文者メールアドレス,商品管理番号,商品名,単価,個数"
RAKUTEN_ROWS = [
    "123456-20261101-0000000001,発送完了,2026-11-01 10:15:00,6600,abc123@pc.fw.rakuten.ne.jp,lotion-200,化粧水 200ml,3300,2",
    "123456-20261101-0000000002,発送完了,2026/11/01 12:00,4400,xyz789@pc.fw.rakuten.ne.jp,cream-50,クリーム 50g,2200,1",
    "123456-20261101-0000000002,発送完了,2026/11/01 12:00,4400,xyz789@pc.fw.rakuten.ne.jp,mask-5,マスク 5枚,2200,1",
    "123456-20261102-0000000003,キャンセル,2026-11-02 09:00:00,3300,abc123@pc.fw.rakuten.ne.jp,lotion-200,化粧水 200ml,3300,1",
    "123456-20261102-0000000004,発送完了,昨日,1000,abc123@pc.fw.rakuten.ne.jp,soap,石鹸,1000,1",
]
SHOPIFY = """Name,Email,Financial Status,Paid at,Fulfillment Status,Fulfilled at,Accepts Marketing,Currency,Subtotal,Shipping,Taxes,Total,Discount Code,Discount Amount,Shipping Method,Created at,Lineitem quantity,Lineitem name,Lineitem price,Lineitem compare at price,Lineitem sku,Lineitem requires shipping,Lineitem taxable,Lineitem fulfillment status,Cancelled at,Refunded Amount,Vendor,Id
#1001,Hanako@Example.jp,paid,2026-11-01 10:00:05 +0900,fulfilled,2026-11-02 09:00:00 +0900,yes,JPY,5000,500,0,5500,,0,Standard,2026-11-01 10:00:00 +0900,1,Lotion,3000,,LOT-1,true,true,fulfilled,,0,Shop,5550000001
#1001,,,,,,,,,,,,,,,,1,Cream,2000,,CRM-1,true,true,fulfilled,,,Shop,
#1002,taro@example.jp,partially_refunded,2026-11-03 18:00:00 +0900,fulfilled,,no,JPY,8000,0,0,8000,,0,Standard,2026-11-03 18:00:00 +0900,2,Serum,4000,,SER-1,true,true,fulfilled,,3000,Shop,5550000002
#1003,taro@example.jp,refunded,2026-11-04 18:00:00 +0900,,,no,JPY,1000,0,0,1000,,0,Standard,2026-11-04 18:00:00 +0900,1,Soap,1000,,SOAP-1,true,true,,2026-11-05 10:00:00 +0900,1000,Shop,5550000003
"""

RULES = """
rule thanks when purchased then send thanks
rule loyal when orders >= 2 then send loyal
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    (folder / "messages.yaml").write_text("thanks: ありがとう\nloyal: いつもありがとう\n", encoding="utf-8")
    (folder / "shop.rule").write_text(RULES, encoding="utf-8")
    return folder


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def rakuten_file(tmp_path: Path) -> Path:
    path = tmp_path / "rms_orders.csv"
    path.write_bytes(("\r\n".join([RAKUTEN_HEADER, *RAKUTEN_ROWS]) + "\r\n").encode("cp932"))
    return path


def friend(db: Path, friend_id: str) -> dict:
    store = Store(str(db))
    try:
        return store.friend(friend_id)
    finally:
        store.close()


def test_rakuten_cp932_csv_imports_links_and_keeps_and_refuses_with_file_line(tmp_path, rules, fresh_db_path):
    db = fresh_db_path  # a file, or a PostgreSQL schema
    links = tmp_path / "links.csv"
    links.write_text("customer,friend\nabc123@pc.fw.rakuten.ne.jp,Uaaaa\n", encoding="utf-8")
    assert invoke("import", "customers", str(links), "--db", str(db))[0] == 0
    path = rakuten_file(tmp_path)
    code, out = invoke("import", "orders", str(path), "--format", "rakuten", "--db", str(db), "--rules", str(rules))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("rms_orders.csv: 3 orders read (5 rows) in ")
    assert lines[1:] == [
        "  2 counted for linked friends",
        "  1 kept for customers not linked yet (they count once linked)",
        "  0 already imported (unchanged)",
        "  1 refused:",
        f"    {path}:6: order 123456-20261102-0000000004: `注文日時` '昨日' is not a date and time",
    ]
    # the cancelled order (キャンセル) is kept but does not count: one order of 6,600 yen
    u = friend(db, "Uaaaa")
    assert (u["orders"], u["total_spent"]) == (1, 6600)
    assert dt.datetime.fromtimestamp(u["last_purchase_at"], dt.timezone(dt.timedelta(hours=9))) == dt.datetime(
        2026, 11, 1, 10, 15, tzinfo=dt.timezone(dt.timedelta(hours=9))
    )

    # again: nothing doubles
    code, out = invoke("import", "orders", str(path), "--format", "rakuten", "--db", str(db), "--rules", str(rules))
    assert out.splitlines()[1:4] == [
        "  0 counted for linked friends",
        "  0 kept for customers not linked yet (they count once linked)",
        "  3 already imported (unchanged)",
    ]
    assert (friend(db, "Uaaaa")["orders"], friend(db, "Uaaaa")["total_spent"]) == (1, 6600)

    # the kept customer is linked later: its order counts now
    links.write_text(
        "customer,friend\nXYZ789@pc.fw.rakuten.ne.jp,Ubbbb\nabc123@pc.fw.rakuten.ne.jp,Uaaaa\n,Ucccc\n",
        encoding="utf-8",
    )
    code, out = invoke("import", "customers", str(links), "--db", str(db), "--rules", str(rules))
    assert out.splitlines() == [
        "links.csv: 3 rows read",
        "  1 linked (their kept orders count now)",
        "  1 already linked (unchanged)",
        "  1 refused:",
        f"    {links}:4: no customer id",
    ]
    u = friend(db, "Ubbbb")
    assert (u["orders"], u["total_spent"]) == (1, 4400)


def test_history_is_applied_without_sending_anything(tmp_path, rules, fresh_db_path):
    db = fresh_db_path  # a file, or a PostgreSQL schema
    store = Store(str(db))
    project = load_project(str(rules)).project
    engine = Engine(project, store)
    from engine.runtime.intake import parse_events

    engine.apply_events(parse_events('{"type": "follow", "friend": "Uaaaa", "at": "2026-11-01T09:00:00+09:00"}'))
    engine.tick(dt.datetime(2026, 11, 1, 9, tzinfo=dt.UTC))
    links = tmp_path / "links.csv"
    links.write_text("customer,friend\nabc123@pc.fw.rakuten.ne.jp,Uaaaa\n", encoding="utf-8")
    assert invoke("import", "customers", str(links), "--db", str(db))[0] == 0
    path = tmp_path / "more.csv"
    rows = [RAKUTEN_ROWS[0], RAKUTEN_ROWS[0].replace("0000000001", "0000000009")]
    path.write_bytes(("\n".join([RAKUTEN_HEADER, *rows]) + "\n").encode("cp932"))
    assert invoke("import", "orders", str(path), "--format", "rakuten", "--db", str(db), "--rules", str(rules))[0] == 0
    assert store.outbox() == []  # the import itself sends nothing
    engine.tick(dt.datetime(2026, 11, 3, 9, tzinfo=dt.UTC))
    # `when purchased` does not fire for history; a condition on the history does
    assert [(o["rule"], o["messages"]) for o in store.outbox()] == [("loyal", ["loyal"])]
    store.close()


def test_shopify_export_one_row_per_line_item_with_refunds_and_cancellations(tmp_path, rules, fresh_db_path):
    db = fresh_db_path  # a file, or a PostgreSQL schema
    links = tmp_path / "links.csv"
    links.write_text("email,line_user_id\nhanako@example.jp,U1\ntaro@example.jp,U2\n", encoding="utf-8")
    assert invoke("import", "customers", str(links), "--db", str(db))[0] == 0
    path = tmp_path / "orders_export.csv"
    path.write_text(SHOPIFY, encoding="utf-8")
    code, out = invoke("import", "orders", str(path), "--format", "shopify", "--db", str(db), "--rules", str(rules))
    assert code == 0, out
    assert out.splitlines()[1] == "  3 counted for linked friends"
    store = Store(str(db))
    u1, u2 = store.friend("U1"), store.friend("U2")
    items = store.conn.execute(
        "SELECT product, amount FROM activity WHERE friend = 'U1' AND kind = 'purchase' ORDER BY product"
    ).fetchall()
    store.close()
    assert (u1["orders"], u1["total_spent"]) == (1, 5500)
    assert [tuple(r) for r in items] == [("CRM-1", 2000), ("LOT-1", 3000)]
    # #1002 refunded 3,000 of 8,000; #1003 cancelled: one order of 5,000
    assert (u2["orders"], u2["total_spent"]) == (1, 5000)


def test_plain_csv_with_columns_named_differently(tmp_path, rules, fresh_db_path):
    db = fresh_db_path  # a file, or a PostgreSQL schema
    path = tmp_path / "orders.csv"
    path.write_text(
        "注文番号,会員ID,at,amount,product,price,quantity\n"
        'A-1,C-1001,2026-11-01T10:00:00+09:00,"5,400",SKU1,5400,1\n'
        "A-2,C-1001,2026-11-02T10:00:00+09:00,-3,SKU1,5400,1\n"
        ",C-1001,2026-11-02T10:00:00+09:00,100,SKU1,100,1\n"
        "A-3,C-1001,2026-11-03T10:00:00+09:00,100,SKU1,100,zero\n",
        encoding="utf-8",
    )
    code, out = invoke(
        "import",
        "orders",
        str(path),
        "--format",
        "csv",
        "--columns",
        "order_id=注文番号,customer=会員ID",
        "--db",
        str(db),
        "--rules",
        str(rules),
    )
    assert code == 0, out
    assert out.splitlines()[1:] == [
        "  0 counted for linked friends",
        "  1 kept for customers not linked yet (they count once linked)",
        "  0 already imported (unchanged)",
        "  3 refused:",
        f"    {path}:3: order A-2: `amount` '-3' is not an amount",
        f"    {path}:4: no order id (column `注文番号`)",
        f"    {path}:5: order A-3: `quantity` 'zero' is not a count of 1 or more",
    ]


@pytest.mark.parametrize(
    "content,fmt,message",
    [
        (
            "a,b\n1,2\n",
            "shopify",
            "this is not a shopify order file: no column for order_id (`Name`), "
            "at (`Created at`), amount (`Total`), customer (`Email`)",
        ),
        ("", "csv", "the file is empty"),
    ],
)
def test_a_file_that_is_not_an_order_file_is_one_clean_error(tmp_path, rules, content, fmt, message):
    path = tmp_path / "x.csv"
    path.write_text(content, encoding="utf-8")
    code, out = invoke("import", "orders", str(path), "--format", fmt, "--db", str(tmp_path / "x.db"), "--lang", "en")
    assert code == 1
    assert message in out and "Traceback" not in out


def test_unknown_columns_field_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("order_id,at,amount,customer\n", encoding="utf-8")
    args = ("import", "orders", str(path), "--format", "csv", "--columns", "sku=品番", "--db", str(tmp_path / "x.db"))
    code, out = invoke(*args, "--lang", "en")
    assert code == 2
    assert "Error: Invalid value for '--columns': unknown field `sku`" in out
    code, out = invoke(*args, "--lang", "ja")
    assert code == 2 and "`sku` という項目はありません" in out


def test_the_summary_and_the_refusals_in_the_folders_language(tmp_path, rules):
    """A folder that says `language: ja` has the summary in Japanese, as `validate` does;
    `--lang en` gives English."""
    (rules / "settings.yaml").write_text("timezone: Asia/Tokyo\nlanguage: ja\n", encoding="utf-8")
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,customer,at,amount\nJ-1,C-1,2026-11-01T10:00:00+09:00,5400\nJ-2,C-1,2026-11-02T10:00:00+09:00,abc\n",
        encoding="utf-8",
    )
    args = ("import", "orders", str(path), "--format", "csv", "--db", str(tmp_path / "x.db"), "--rules", str(rules))
    code, out = invoke(*args)
    assert code == 0
    assert out.splitlines()[1:] == [
        "  0件を連携済みの友だちに計上しました",
        "  1件はまだ連携していない顧客の分として保管しました (連携した時点で計上します)",
        "  0件は取り込み済み (変更なし)",
        "  1件は取り込めませんでした:",
        f"    {path}:3: 注文 J-2: `amount` の 'abc' は金額ではありません",
    ]
    code, out = invoke(*args, "--lang", "en")
    assert "  1 already imported (unchanged)" in out.splitlines()
    assert f"    {path}:3: order J-2: `amount` 'abc' is not an amount" in out.splitlines()
    # the customers' links too, from the same folder
    links = tmp_path / "links.csv"
    links.write_text("customer,friend\nC-1,U" + "a" * 32 + "\n", encoding="utf-8")
    code, out = invoke("import", "customers", str(links), "--db", str(tmp_path / "x.db"), "--rules", str(rules))
    assert code == 0 and out.splitlines()[0] == "links.csv: 1行を読みました", out


def test_progress_bar_is_drawn_on_a_terminal_only(tmp_path, rules, capsys, monkeypatch):
    from engine.runtime import importer

    path = rakuten_file(tmp_path)
    monkeypatch.setattr(importer.sys.stderr, "isatty", lambda: True, raising=False)
    assert importer.main_orders(str(path), "rakuten", None, str(tmp_path / "a.db"), str(rules)) == 0
    shown = capsys.readouterr()
    assert "importing orders" in shown.err and "3/3" in shown.err
    monkeypatch.setattr(importer.sys.stderr, "isatty", lambda: False, raising=False)
    assert importer.main_orders(str(path), "rakuten", None, str(tmp_path / "b.db"), str(rules)) == 0
    assert capsys.readouterr().err == ""


#: The columns of RMS's 受注データダウンロード as RMS writes them (a part, in RMS's order): the
#: amounts carry a note, ``合計金額(-99999=無効値)``; the orderer's address is ``メールアドレス``.
RMS_HEADER = [
    "受注番号",
    "受注ステータス",
    "カード決済ステータス",
    "入金日",
    "配送日",
    "お届け時間帯",
    "お届け日指定",
    "担当者",
    "ひとことメモ",
    "メール差込文(お客様へのメッセージ)",
    "初期購入合計金額",
    "利用端末",
    "メールキャリアコード",
    "ギフトチェック（0:なし/1:あり）",
    "コメント",
    "注文日時",
    "複数送付先フラグ",
    "警告表示フラグ",
    "楽天会員フラグ",
    "合計",
    "消費税(-99999=無効値)",
    "送料(-99999=無効値)",
    "代引料(-99999=無効値)",
    "請求金額(-99999=無効値)",
    "合計金額(-99999=無効値)",
    "同梱ID",
    "同梱ステータス",
    "注文日",
    "注文時間",
    "注文者郵便番号１",
    "注文者名字",
    "注文者名前",
    "メールアドレス",
    "商品ID",
    "商品名",
    "商品番号",
    "商品URL",
    "単価",
    "個数",
    "送料込別",
    "税込別",
]


def rms_row(
    number: str, status: str, at: str, total: str, mail: str, item: str, name: str, price: str, quantity: str
) -> list[str]:
    row = dict.fromkeys(RMS_HEADER, "")
    row.update(
        {
            "受注番号": number,
            "受注ステータス": status,
            "注文日時": at,
            "合計": total,
            "請求金額(-99999=無効値)": total,
            "合計金額(-99999=無効値)": total,
            "注文日": at[:10],
            "注文時間": at[11:],
            "注文者名字": "山田",
            "注文者名前": "花子",
            "メールアドレス": mail,
            "商品ID": "10000001",
            "商品名": name,
            "商品番号": item,
            "単価": price,
            "個数": quantity,
            "コメント": "[配送日時指定:]\n希望なし, 置き配",
        }
    )
    return [row[h] for h in RMS_HEADER]


def test_rms_order_csv_with_the_columns_rms_writes(tmp_path, rules):
    import csv
    import io

    mail = "a1b2c3@pc.fw.rakuten.ne.jp"
    rows = [
        rms_row(
            "123456-20261101-0000000001",
            "処理済",
            "2026-11-01 10:15:00",
            "6600",
            mail,
            "lotion-01",
            "化粧水, しっとり",
            "3300",
            "2",
        ),
        rms_row(
            "123456-20261101-0000000001", "処理済", "2026-11-01 10:15:00", "6600", mail, "gift-01", "おまけ", "0", "1"
        ),
        rms_row(
            "123456-20261120-0000000003",
            "キャンセル確定",
            "2026-11-20 08:00:00",
            "3300",
            mail,
            "lotion-01",
            "化粧水",
            "3300",
            "1",
        ),
        rms_row(
            "123456-20261201-0123456789",
            "新規受付",
            "2026-12-01 09:30:12",
            "-99999",
            mail,
            "serum-01",
            "美容液",
            "5500",
            "1",
        ),
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(RMS_HEADER)
    writer.writerows(rows)
    path = tmp_path / "rms_orders.csv"
    path.write_bytes(text.getvalue().encode("cp932"))
    links = tmp_path / "links.csv"
    links.write_text(f"customer,friend\n{mail},Uaaaa\n", encoding="utf-8")
    assert invoke("import", "customers", str(links), "--db", str(tmp_path / "l.db"))[0] == 0
    code, out = invoke(
        "import", "orders", str(path), "--format", "rakuten", "--db", str(tmp_path / "l.db"), "--rules", str(rules)
    )
    assert code == 0, out
    # each row's comment holds a line end: the last order's row is the file's line 8
    assert out.splitlines()[1:] == [
        "  2 counted for linked friends",
        "  0 kept for customers not linked yet (they count once linked)",
        "  0 already imported (unchanged)",
        "  1 refused:",
        f"    {path}:8: order 123456-20261201-0123456789: `合計金額(-99999=無効値)` is -99999: RMS has no total "
        "for this order yet (shipping or price not fixed); import it again once it has one",
    ]
    u = friend(tmp_path / "l.db", "Uaaaa")
    assert (u["orders"], u["total_spent"]) == (1, 6600)  # the cancelled order does not count
