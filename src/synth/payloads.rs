//! Realistic stored payloads for each message body: type codes per format and the XML or text
//! WeChat keeps in `content` / `StrContent` / `CompressContent` / `message_content`.
//! Shapes are those WeChat writes: the appmsg XML (`<msg><appmsg>…<type>N</type>…`) and the
//! image, voice, video, sticker, location and contact-card XML of the base types.

use super::history::{Body, SynthMessage};

/// One message encoded the way the databases store it.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Base type (low bits), as PC 3.x `Type`.
    pub base: i64,
    /// PC 3.x `SubType` (the appmsg type for 49, 4 for a PC pat).
    pub sub: i64,
    /// Android `message.type`.
    pub android_type: i64,
    /// Payload as Android and 4.x store it, without the group sender prefix.
    pub content: String,
    /// PC 3.x: `StrContent`, and the XML that goes LZ4-compressed into `CompressContent`.
    pub pc3_str: String,
    pub pc3_compress: Option<String>,
    pub pc3_display: Option<String>,
    /// PC 3.x `Type` / `SubType` (differ from `base`/`sub` only for pats).
    pub pc3_type: i64,
    pub pc3_sub: i64,
}

impl Encoded {
    /// WeChat 4.x `local_type`: `(sub << 32) | base` for appmsg, the base type otherwise.
    pub fn v4_local_type(&self) -> i64 {
        if self.base == 49 { (self.sub << 32) | 49 } else { self.base }
    }

    /// Android/4.x content with the `sender:\n` prefix received group messages carry.
    pub fn prefixed_content(&self, m: &SynthMessage) -> String {
        if m.is_group && !m.is_self && self.base != 10000 {
            format!("{}:\n{}", m.sender, self.content)
        } else {
            self.content.clone()
        }
    }
}

/// XML-escape text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#x0A;"),
            _ => out.push(c),
        }
    }
    out
}

fn appmsg(inner: &str, from: &str) -> String {
    format!(
        "<msg><appmsg appid=\"\" sdkver=\"0\">{inner}</appmsg><fromusername>{}</fromusername><scene>0</scene><appinfo><version>1</version><appname></appname></appinfo><commenturl></commenturl></msg>",
        esc(from)
    )
}

fn plain(base: i64, content: String) -> Encoded {
    Encoded {
        base,
        sub: 0,
        android_type: base,
        pc3_str: content.clone(),
        content,
        pc3_compress: None,
        pc3_display: None,
        pc3_type: base,
        pc3_sub: 0,
    }
}

fn app(sub: i64, android_type: i64, xml: String, pc3_str_empty: bool) -> Encoded {
    Encoded {
        base: 49,
        sub,
        android_type,
        pc3_str: if pc3_str_empty { String::new() } else { xml.clone() },
        pc3_compress: Some(xml.clone()),
        content: xml,
        pc3_display: None,
        pc3_type: 49,
        pc3_sub: sub,
    }
}

/// Encode one message.
pub fn encode(m: &SynthMessage) -> Encoded {
    let from = &m.sender;
    match &m.body {
        Body::Text(t) => plain(1, t.clone()),
        Body::Quote { text, quoted_svr_id, quoted_sender, quoted_name, quoted_text, quoted_time } => {
            let chatusr = if m.is_group { esc(quoted_sender) } else { String::new() };
            let inner = format!(
                "<title>{}</title><des></des><type>57</type><appattach><cdnthumbaeskey></cdnthumbaeskey><aeskey></aeskey></appattach><refermsg><type>1</type><svrid>{quoted_svr_id}</svrid><fromusr>{}</fromusr><chatusr>{chatusr}</chatusr><displayname>{}</displayname><msgsource>&lt;msgsource&gt;&lt;pua&gt;1&lt;/pua&gt;&lt;/msgsource&gt;</msgsource><content>{}</content><createtime>{quoted_time}</createtime></refermsg>",
                esc(text),
                esc(if m.is_group { &m.conversation } else { quoted_sender }),
                esc(quoted_name),
                esc(quoted_text)
            );
            app(57, 822_083_633, format!("<?xml version=\"1.0\"?>\n{}", appmsg(&inner, from)), true)
        }
        Body::Image { md5, length } => plain(
            3,
            format!(
                "<?xml version=\"1.0\"?>\n<msg><img aeskey=\"{md5}\" encryver=\"1\" cdnthumbaeskey=\"{md5}\" cdnthumburl=\"3057020100044b30490201000204{md5}\" cdnthumblength=\"5270\" cdnthumbheight=\"90\" cdnthumbwidth=\"120\" cdnmidheight=\"0\" cdnmidwidth=\"0\" cdnhdheight=\"0\" cdnhdwidth=\"0\" cdnmidimgurl=\"3057020100044b30490201000204{md5}\" length=\"{length}\" md5=\"{md5}\" hevc_mid_size=\"{length}\" /></msg>"
            ),
        ),
        Body::Sticker { md5, length } => {
            let xml = format!(
                "<msg><emoji fromusername=\"{}\" tousername=\"{}\" type=\"2\" md5=\"{md5}\" len=\"{length}\" cdnurl=\"http://wxapp.tc.qq.com/262/20304/stodownload?m={md5}&amp;filekey=30350201010421301f&amp;hy=SH&amp;storeid=32303&amp;bizid=1023\" width=\"240\" height=\"240\" aeskey=\"\"></emoji></msg>",
                esc(from),
                esc(&m.conversation)
            );
            let mut e = plain(47, xml);
            // Android keeps the short colon form for stickers.
            e.content = format!("{from}:0:{}:{md5}::0", if m.is_self { 1 } else { 0 });
            e
        }
        Body::Voice { ms } => plain(
            34,
            format!(
                "<msg><voicemsg endflag=\"1\" cancelflag=\"0\" forwardflag=\"0\" voiceformat=\"4\" voicelength=\"{ms}\" length=\"{}\" bufid=\"0\" aeskey=\"\" voiceurl=\"3052020100044b3049\" fromusername=\"{}\" /></msg>",
                ms / 2,
                esc(from)
            ),
        ),
        Body::Video { secs, md5 } => plain(
            43,
            format!(
                "<?xml version=\"1.0\"?>\n<msg><videomsg aeskey=\"{md5}\" cdnvideourl=\"3057020100044b3049\" length=\"{}\" playlength=\"{secs}\" fromusername=\"{}\" md5=\"{md5}\" newmd5=\"{md5}\" rawmd5=\"\" /></msg>",
                secs * 200_000,
                esc(from)
            ),
        ),
        Body::File { name, size } => {
            let ext = name.rsplit('.').next().unwrap_or("");
            let inner = format!(
                "<title>{}</title><des></des><type>6</type><appattach><totallen>{size}</totallen><attachid>@cdn_3057020100_1</attachid><fileext>{}</fileext><cdnattachurl>3057020100</cdnattachurl><aeskey>3f28b0cbd65a86c3a980f3e22808c0fe</aeskey></appattach><md5>84c6737fe9549270c9b3ca4f6fc88f6f</md5>",
                esc(name),
                esc(ext)
            );
            app(6, 1_090_519_089, appmsg(&inner, from), false)
        }
        Body::Link { title, des, url } => {
            let inner = format!(
                "<title>{}</title><des>{}</des><username></username><action>view</action><type>5</type><showtype>0</showtype><content></content><url>{}</url><lowurl></lowurl><appattach><totallen>0</totallen><attachid></attachid><cdnthumburl>3057020100</cdnthumburl></appattach><sourceusername>gh_6651e07e4b2d</sourceusername><sourcedisplayname>新华社</sourcedisplayname><thumburl>https://mmbiz.qpic.cn/mmbiz_jpg/640</thumburl><statextstr>GhQKEnd4Y2I4ZDQyOThjNmEwOWJjYg==</statextstr><patMsg><chatUser></chatUser><records><recordNum>0</recordNum></records></patMsg>",
                esc(title),
                esc(des),
                esc(url)
            );
            app(5, 49, appmsg(&inner, from), false)
        }
        Body::Transfer { cents } => {
            let yuan = format!("{}.{:02}", cents / 100, cents % 100);
            let inner = format!(
                "<title><![CDATA[微信转账]]></title><des><![CDATA[收到转账{yuan}元。如需收钱，请点此升级至最新版本]]></des><action></action><type>2000</type><content><![CDATA[]]></content><url><![CDATA[https://support.weixin.qq.com/cgi-bin/mmsupport-bin/readtemplate?t=page/common_page__upgrade&text=text001&btn_text=btn_text_0]]></url><wcpayinfo><paysubtype>1</paysubtype><feedesc><![CDATA[￥{yuan}]]></feedesc><transcationid><![CDATA[53010000124165202401122702555054]]></transcationid><transferid><![CDATA[1000050001202401120020624149917]]></transferid><invalidtime><![CDATA[{}]]></invalidtime><begintransfertime><![CDATA[{}]]></begintransfertime><effectivedate><![CDATA[1]]></effectivedate><pay_memo><![CDATA[]]></pay_memo><receiver_username><![CDATA[{}]]></receiver_username><payer_username><![CDATA[]]></payer_username></wcpayinfo>",
                m.timestamp + 86_400,
                m.timestamp,
                if m.is_self { &m.conversation } else { from }
            );
            app(2000, 419_430_449, appmsg(&inner, from), false)
        }
        Body::RedPacket { wish } => {
            let inner = format!(
                "<des><![CDATA[我给你发了一个红包，赶紧去拆!]]></des><type><![CDATA[2001]]></type><title><![CDATA[微信红包]]></title><wcpayinfo><receivertitle><![CDATA[{wish}]]></receivertitle><sendertitle><![CDATA[{wish}]]></sendertitle><scenetext><![CDATA[微信红包]]></scenetext><senderdes><![CDATA[查看红包]]></senderdes><receiverdes><![CDATA[领取红包]]></receiverdes><sceneid><![CDATA[1002]]></sceneid><paymsgid><![CDATA[1000039901202401127291056629415]]></paymsgid><invalidtime><![CDATA[{}]]></invalidtime></wcpayinfo>",
                m.timestamp + 86_400
            );
            app(2001, 436_207_665, appmsg(&inner, from), false)
        }
        Body::RedPacketOpened { by_name } => plain(
            10000,
            format!(
                "<img src=\"SystemMessages_HongbaoIcon.png\"/>  {by_name}领取了你的<_wc_custom_link_ color=\"#FD9931\" href=\"weixin://weixinhongbao/opendetail?sendid=1000039801202212157067536925003\">红包</_wc_custom_link_>"
            ),
        ),
        Body::ContactCard { wxid, nickname } => plain(
            42,
            format!(
                "<?xml version=\"1.0\"?>\n<msg bigheadimgurl=\"\" smallheadimgurl=\"\" username=\"{}\" nickname=\"{}\" fullpy=\"\" shortpy=\"\" alias=\"\" imagestatus=\"3\" scene=\"17\" province=\"上海\" city=\"闵行\" sign=\"逍遥自在\" percard=\"1\" sex=\"2\" certflag=\"0\" certinfo=\"\" certinfoext=\"\" brandIconUrl=\"\" brandHomeUrl=\"\" brandSubscriptConfigUrl=\"\" brandFlags=\"0\" regionCode=\"CN_Shanghai_Minhang\" />",
                esc(wxid),
                esc(nickname)
            ),
        ),
        Body::Location { x, y, label, poi } => plain(
            48,
            format!(
                "<?xml version=\"1.0\"?>\n<msg>\n\t<location x=\"{x:.6}\" y=\"{y:.6}\" scale=\"15\" label=\"{}\" maptype=\"roadmap\" poiname=\"{}\" poiid=\"qqmap_8314157447236438749\" isFromPoiList=\"true\" adcode=\"110101\" cityname=\"北京市\" />\n</msg>",
                esc(label),
                esc(poi)
            ),
        ),
        Body::MergedHistory { title, items } => {
            let desc: Vec<String> = items.iter().map(|(n, t)| format!("{n}: {t}")).collect();
            let desc = desc.join("\n");
            let mut list = String::new();
            for (i, (n, t)) in items.iter().enumerate() {
                list.push_str(&format!(
                    "<dataitem datatype=\"1\" dataid=\"d{i}\"><sourcename>{}</sourcename><sourcetime>2024-01-08 12:41:45</sourcetime><datadesc>{}</datadesc><srcMsgCreateTime>1704688905</srcMsgCreateTime></dataitem>",
                    esc(n),
                    esc(t)
                ));
            }
            let record = format!(
                "<recordinfo><fromscene>0</fromscene><favcreatetime>0</favcreatetime><isChatRoom>1</isChatRoom><title>{}</title><desc>{}</desc><datalist count=\"{}\">{list}</datalist></recordinfo>",
                esc(title),
                esc(&desc),
                items.len()
            );
            let inner = format!(
                "<title>{}</title><des>{}</des><type>19</type><url>https://support.weixin.qq.com/cgi-bin/mmsupport-bin/readtemplate?t=page/favorite_record__w_unsupport</url><recorditem><![CDATA[{record}]]></recorditem>",
                esc(title),
                esc(&desc)
            );
            app(19, 49, appmsg(&inner, from), false)
        }
        Body::Pat { from: pf, from_name, patted, patted_name } => {
            let text = format!("\"{from_name}\" 拍了拍 \"{patted_name}\"");
            let inner = format!(
                "<title>{}</title><des></des><type>62</type><patMsg><chatUser>{}</chatUser><records><record><fromUser>{}</fromUser><pattedUser>{}</pattedUser><templete><![CDATA[\"${{{}}}\" 拍了拍 \"${{{}}}\"]]></templete><createTime>{}</createTime><svrId>{}</svrId><readStatus>1</readStatus></record></records></patMsg>",
                esc(&text),
                esc(&m.conversation),
                esc(pf),
                esc(patted),
                pf,
                patted,
                m.timestamp,
                m.svr_id
            );
            let mut e = app(62, 922_746_929, appmsg(&inner, from), false);
            // PC 3.x keeps pats as a system line (10000, 4) with the names in DisplayContent.
            e.pc3_str = text.clone();
            e.pc3_compress = None;
            e.pc3_display = Some(text);
            e.pc3_type = 10000;
            e.pc3_sub = 4;
            e
        }
        Body::Revoke { text } => {
            let mut e = plain(10000, text.clone());
            e.pc3_str = format!("<revokemsg>{}</revokemsg>", esc(text));
            e
        }
        Body::System { text } => plain(10000, text.clone()),
        Body::Announcement { text } => {
            let inner = format!(
                "<type>87</type><url>https://support.weixin.qq.com/cgi-bin/mmsupport-bin/readtemplate?t=page/common_page__upgrade&amp;btn_text=btn_text_0&amp;text=text008</url><announcement><![CDATA[<group_notice_item><edittime>{}</edittime><datalist count=\"1\"><dataitem datatype=\"1\" htmlid=\"-1\"><datadesc>{}</datadesc></dataitem></datalist><source sourceid=\"d3eba20cfc4f64adfe96d0da4e6a7410\"><fromusr>{}</fromusr><tousr>{}</tousr></source></group_notice_item>]]></announcement><textannouncement><![CDATA[{text}]]></textannouncement><xmlpuretext><![CDATA[0]]></xmlpuretext>",
                m.timestamp,
                esc(text),
                esc(from),
                esc(&m.conversation)
            );
            app(87, 1_107_296_305, appmsg(&inner, from), false)
        }
        Body::MiniProgram { title, app_name } => {
            let inner = format!(
                "<title>{}</title><des></des><type>33</type><url>https://mp.weixin.qq.com/mp/waerrpage?appid=wx32540bd863b27570&amp;type=upgrade</url><sourcedisplayname>{}</sourcedisplayname><weappinfo><username><![CDATA[gh_0e5e9d7a1f3c@app]]></username><appid><![CDATA[wx32540bd863b27570]]></appid><type>2</type><version>12</version><pagepath><![CDATA[pages/index/index.html]]></pagepath></weappinfo>",
                esc(title),
                esc(app_name)
            );
            app(33, 49, appmsg(&inner, from), false)
        }
        Body::Channels { title, author } => {
            let inner = format!(
                "<title>当前微信版本不支持展示该内容，请升级至最新版本。</title><des></des><type>51</type><url>https://support.weixin.qq.com/security/readtemplate?t=w_security_center_website/upgrade</url><finderFeed><objectId>14150452893016066291</objectId><nickname>{}</nickname><desc>{}</desc><mediaCount>1</mediaCount></finderFeed>",
                esc(author),
                esc(title)
            );
            app(51, 754_974_769, appmsg(&inner, from), false)
        }
        Body::Voip { video, secs } => {
            let mut e = plain(
                50,
                format!(
                    "<voipmsg type=\"VoIPBubbleMsg\"><VoIPBubbleMsg><msg><![CDATA[通话时长 {:02}:{:02}]]></msg><room_type>{}</room_type><red_dot>false</red_dot><roomid>1254857325</roomid><roomkey>0</roomkey><inviteid>1711000000</inviteid><msg_type>100</msg_type><timestamp>{}</timestamp></VoIPBubbleMsg></voipmsg>",
                    secs / 60,
                    secs % 60,
                    if *video { 0 } else { 1 },
                    m.timestamp * 1000
                ),
            );
            e.pc3_display = Some(format!("通话时长 {:02}:{:02}", secs / 60, secs % 60));
            e
        }
    }
}
