"""The rtnetlink support table as the page lays it out (reports/support.py, templates/support.html.j2):
stacks that answer alike share a column, attributes are counted against the kernel's, and no
row is taller than a line or two. The table comes from labkit.rtnetlink.support.merge, fed rows
as the rtnetlink checks note them, so the shape is the one a run writes."""

from __future__ import annotations

from html.parser import HTMLParser

import jinja2
import pytest

from labkit.rtnetlink.support import merge
from reports.support import columns, support_table

KERNEL_LINK = [f"IFLA_{n}" for n in ("ADDRESS", "BROADCAST", "IFNAME", "MTU", "OPERSTATE", "TXQLEN", "QDISC", "STATS64")]
GVISOR_LINK = ["IFLA_ADDRESS", "IFLA_IFNAME", "IFLA_MTU"]
GVISOR_VARIANTS = ["gvisor", "gvisor-ch2", "gvisor-ch4", "gvisor-txcsum", "gvisor-vnethdr"]


def row(message, stack, status="supported", differences=(), attrs=(), kernel=(), check="test_x"):
    return {
        "message": message,
        "stack": stack,
        "check": check,
        "status": status,
        "differences": list(differences),
        "attrs": {"eth0": list(attrs)} if attrs else {},
        "kernel_attrs": {"eth0": list(kernel)} if kernel else {},
    }


def table(odd_one_out=True):
    """linux (the kernel's answers); five gvisor variants alike; gvisor-ch4 deaf to a delete."""
    rows = []
    for stack in ["linux", *GVISOR_VARIANTS]:
        gvisor = stack != "linux"
        lacking = ["IFLA_OPERSTATE kernel 'UP', stack None", "IFLA_TXQLEN kernel 1000, stack None"]
        if stack == "gvisor-ch2":
            lacking.reverse()  # the order rows arrived in is no answer
        rows.append(row("RTM_GETLINK", stack, "differs" if gvisor else "supported", lacking if gvisor else [],
                        GVISOR_LINK if gvisor else KERNEL_LINK, KERNEL_LINK))  # fmt: skip
        deaf = odd_one_out and stack == "gvisor-ch4"
        rows.append(row("RTM_DELADDR", stack, "differs" if deaf else "supported", ["echo after the delete: deaf"] if deaf else []))
        rows.append(
            row("RTM_NEWROUTE", stack, "unsupported" if gvisor else "supported", ["errno kernel None, stack 95"] if gvisor else [])
        )
    return merge(rows)


class Dom(HTMLParser):
    """Enough of a DOM for these tests: elements with attributes, children and text."""

    VOID = {"br", "img", "meta", "input", "hr"}

    def __init__(self, text):
        super().__init__()
        self.root = {"tag": "", "attrs": {}, "children": [], "text": ""}
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": ""}
        self.stack[-1]["children"].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        while len(self.stack) > 1 and self.stack.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data


def find(node, tag, **attrs):
    out = []
    for child in node["children"]:
        if child["tag"] == tag and all(child["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
            out.append(child)
        out += find(child, tag, **attrs)
    return out


def render(context):
    # The page's settings (reports.html.environment): autoescape, StrictUndefined. Built here so
    # the macro is tested whatever else the page module imports.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader("reports/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.from_string('{% from "support.html.j2" import support %}{{ support(s) }}').render(s=context)


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
    from .conftest import ROOT

    monkeypatch.chdir(ROOT)


def test_variants_that_answer_alike_share_a_column_headed_by_their_names():
    shaped = support_table(table())
    assert [c["stacks"] for c in shaped["columns"]] == [
        ["gvisor", "gvisor-ch2", "gvisor-txcsum", "gvisor-vnethdr"],
        ["gvisor-ch4"],
        ["linux"],
    ]
    assert shaped["stacks"] == 6
    dom = Dom(render(shaped))
    heads = {h["attrs"]["data-stacks"]: h for h in find(dom.root, "th") if "data-stacks" in h["attrs"]}
    merged = heads["gvisor gvisor-ch2 gvisor-txcsum gvisor-vnethdr"]
    assert merged["text"] == "gvisor, gvisor-ch2, … (4)"
    assert merged["attrs"]["title"] == "gvisor, gvisor-ch2, gvisor-txcsum, gvisor-vnethdr"  # every name, on hover
    assert heads["gvisor-ch4"]["text"] == "gvisor-ch4" and heads["linux"]["text"] == "linux"
    # The odd one out keeps its own answer on the row where it differs.
    deladdr = find(dom.root, "tr", data_message="RTM_DELADDR")[0]
    assert [td["attrs"].get("data-status") for td in find(deladdr, "td")[1:4]] == ["supported", "differs", "supported"]


def test_without_the_odd_one_out_every_gvisor_variant_is_one_column():
    assert columns(table(odd_one_out=False)["messages"]) == [GVISOR_VARIANTS, ["linux"]]


def test_attributes_are_counted_against_the_kernels_with_the_missing_ones_on_demand():
    dom = Dom(render(support_table(table())))
    getlink = find(dom.root, "tr", data_message="RTM_GETLINK")[0]
    gvisor, linux = find(getlink, "td")[1], find(getlink, "td")[3]
    summary = find(gvisor, "summary")[0]
    assert summary["text"] == "3 of the kernel's 8 attributes"
    missing = find(gvisor, "p", **{"class": "small missing-attrs"})[0]["text"]
    assert missing == "missing: IFLA_BROADCAST, IFLA_OPERSTATE, IFLA_QDISC, IFLA_STATS64, IFLA_TXQLEN"
    assert find(gvisor, "details")[0]["attrs"].get("open") is None  # closed until asked
    assert "8 of the kernel's 8 attributes" in linux["text"] and not find(linux, "details")  # nothing more to show
    assert gvisor["attrs"]["title"] == "IFLA_OPERSTATE kernel 'UP', stack None\nIFLA_TXQLEN kernel 1000, stack None"


def test_nothing_is_counted_where_there_is_nothing_to_count():
    text = render(support_table(table()))
    dom = Dom(text)
    for message in ("RTM_DELADDR", "RTM_NEWROUTE"):  # the kernel returns no attribute for these
        tr = find(dom.root, "tr", data_message=message)[0]
        assert "attribute" not in tr["text"] and not find(tr, "details"), tr["text"]
    assert "0 attrs" not in text and "attrs</span>" not in text


def test_the_kernels_attributes_take_one_line_until_opened():
    dom = Dom(render(support_table(table())))
    kernel = find(find(dom.root, "tr", data_message="RTM_GETLINK")[0], "td", **{"class": "kernel-attrs"})[0]
    assert find(kernel, "summary")[0]["text"] == "8 attributes"
    assert find(kernel, "p")[0]["text"] == ", ".join(sorted(KERNEL_LINK))
    empty = find(find(dom.root, "tr", data_message="RTM_DELADDR")[0], "td", **{"class": "kernel-attrs"})[0]
    assert empty["text"] == "" and not empty["children"]


def test_an_attribute_the_kernel_did_not_return_is_named_apart():
    rows = [row("RTM_GETADDR", "linux", attrs=["IFA_LABEL"], kernel=["IFA_LABEL"]),
            row("RTM_GETADDR", "gvisor", attrs=["IFA_LABEL", "IFA_<odd>"], kernel=["IFA_LABEL"])]  # fmt: skip
    text = render(support_table(merge(rows)))
    assert "1 of the kernel&#39;s 1 attribute</summary>" in text
    assert "not the kernel's: IFA_&lt;odd&gt;</p>" in text  # named, and escaped
    assert '<summary class="small">1 attribute</summary>' in text


def test_no_table_without_rtnetlink_checks():
    assert support_table(None) is None
    assert support_table({"messages": {}, "kernel_attrs": {}}) is None


def test_variants_whose_rtnetlink_checks_were_carried_over_show_the_answers_that_stand_for_theirs():
    """A variant that ran no rtnetlink check of its own (the matrix rule carried gvisor's verdicts
    to it) answers as gvisor does: it joins gvisor's column instead of showing a blank one."""
    rows = [
        row("RTM_GETLINK", "linux", attrs=KERNEL_LINK, kernel=KERNEL_LINK),
        row("RTM_GETLINK", "gvisor", "differs", ["IFLA_MTU kernel 1500, stack 65535"], GVISOR_LINK, KERNEL_LINK),
        row("RTM_GETLINK", "gvisor-ch4", "unsupported", ["EOPNOTSUPP"], (), KERNEL_LINK),
    ]
    merged = merge(rows)
    alone = support_table(merged)
    assert [c["stacks"] for c in alone["columns"]] == [["gvisor"], ["gvisor-ch4"], ["linux"]]
    filled = support_table(merged, {"gvisor-ch2": "gvisor", "gvisor-ch4": "gvisor", "linux-txcsum": "linux"})
    # gvisor-ch4 measured its own answer: that one stands, the carried one does not replace it
    assert [c["stacks"] for c in filled["columns"]] == [["gvisor", "gvisor-ch2"], ["gvisor-ch4"], ["linux", "linux-txcsum"]]


def test_rows_are_grouped_by_family_each_under_its_heading():
    """The requests first, then the socket, notifications, the libraries and commands: a reader
    looking for what `ip monitor` or SO_RCVBUF got finds the family together, not spread through
    the alphabet."""
    rows = [
        row(message, stack, "differs" if stack == "gvisor" and message.startswith("notify") else "supported")
        for stack in ("linux", "gvisor")
        for message in (
            "notify: RTM_NEWADDR",
            "socket: SO_RCVBUF",
            "RTM_GETLINK",
            "ip: route get",
            "socket: NETLINK_EXT_ACK",
            "zz: odd",
        )
    ]
    shaped = support_table(merge(rows))
    assert [(r["family"], r["message"]) for r in shaped["rows"]] == [
        ("requests and answers", "RTM_GETLINK"),
        ("the socket", "socket: NETLINK_EXT_ACK"),
        ("the socket", "socket: SO_RCVBUF"),
        ("notifications", "notify: RTM_NEWADDR"),
        ("iproute2 commands", "ip: route get"),
        ("zz", "zz: odd"),
    ]
    dom = Dom(render(shaped))
    headings = [tr["text"].strip() for tr in find(dom.root, "tr", **{"class": "family"})]
    assert headings == ["requests and answers", "the socket", "notifications", "iproute2 commands", "zz"]
    (notify,) = find(dom.root, "tr", data_message="notify: RTM_NEWADDR")
    status = dict(zip([c["label"] for c in shaped["columns"]], [td["attrs"].get("data-status") for td in find(notify, "td")[1:3]]))
    assert status == {"linux": "supported", "gvisor": "differs"}
